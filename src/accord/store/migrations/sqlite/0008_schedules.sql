-- Periodic tasks (@app.schedule): one row per (app, schedule name), written
-- when a node of the app starts. The store fires due rows (next_fire_at, in
-- store time, has passed) and advances them in the same transaction
-- (accord.store.sql.schedules). cron is evaluated in UTC; every is seconds.
-- defined = 0: the app's nodes no longer define it (orphaned, not fired);
-- enabled = 0: paused (accord schedules pause).
CREATE TABLE schedules (
    app            TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    task           TEXT    NOT NULL,
    cron           TEXT,
    every          REAL,
    args           BLOB    NOT NULL,
    catch_up       TEXT    NOT NULL DEFAULT 'skip',
    next_fire_at   REAL    NOT NULL,
    last_fired_at  REAL,
    last_slot      REAL,
    last_run_id    INTEGER,
    fired          INTEGER NOT NULL DEFAULT 0,
    enabled        INTEGER NOT NULL DEFAULT 1,
    defined        INTEGER NOT NULL DEFAULT 1,
    defined_at     REAL    NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE INDEX schedules_due ON schedules (app, next_fire_at);

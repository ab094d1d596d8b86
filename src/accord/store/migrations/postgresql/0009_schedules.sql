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
    every          DOUBLE PRECISION,
    args           BYTEA   NOT NULL,
    catch_up       TEXT    NOT NULL DEFAULT 'skip',
    next_fire_at   DOUBLE PRECISION NOT NULL,
    last_fired_at  DOUBLE PRECISION,
    last_slot      DOUBLE PRECISION,
    last_run_id    BIGINT,
    fired          BIGINT  NOT NULL DEFAULT 0,
    enabled        BIGINT  NOT NULL DEFAULT 1,
    defined        BIGINT  NOT NULL DEFAULT 1,
    defined_at     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (app, name)
);
CREATE INDEX schedules_due ON schedules (app, next_fire_at);

-- What task attempts printed and logged (accord.worker.capture): one row per
-- line, and one per attempt with its byte count and what was dropped to keep
-- it under the bound. Rows go when the attempt is more than KEEP_ATTEMPTS
-- attempts old (accord.store.sql.logs).
CREATE TABLE task_log_attempts (
    task_id     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    fence       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL DEFAULT 0,
    dropped     INTEGER NOT NULL DEFAULT 0,
    next_seq    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE task_logs (
    task_id     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    at          REAL    NOT NULL,
    stream      TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
);

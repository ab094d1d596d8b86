-- What task attempts printed and logged (accord.worker.capture): one row per
-- line, and one per attempt with its byte count and what was dropped to keep
-- it under the bound. Rows go when the attempt is more than KEEP_ATTEMPTS
-- attempts old (accord.store.sql.logs).
CREATE TABLE task_log_attempts (
    task_id     BIGINT  NOT NULL,
    attempt     BIGINT  NOT NULL,
    fence       BIGINT  NOT NULL,
    bytes       BIGINT  NOT NULL DEFAULT 0,
    dropped     BIGINT  NOT NULL DEFAULT 0,
    next_seq    BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE task_logs (
    task_id     BIGINT  NOT NULL,
    attempt     BIGINT  NOT NULL,
    seq         BIGINT  NOT NULL,
    at          DOUBLE PRECISION NOT NULL,
    stream      TEXT    NOT NULL,
    text        TEXT    NOT NULL,
    size        BIGINT  NOT NULL,
    PRIMARY KEY (task_id, attempt, seq)
);

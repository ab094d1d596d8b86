-- accord schema, version 1.
-- Times are seconds since the epoch (REAL). Task states:
-- pending (waiting on dependencies) -> ready -> running -> succeeded | failed | cancelled.

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    app           TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    root_task_id  INTEGER,
    state         TEXT    NOT NULL DEFAULT 'running',
    created_at    REAL    NOT NULL,
    finished_at   REAL,
    error         TEXT
);
CREATE INDEX runs_open ON runs (state) WHERE state = 'running';

CREATE TABLE tasks (
    id                INTEGER PRIMARY KEY,
    run_id            INTEGER NOT NULL,
    parent_id         INTEGER,
    seq               INTEGER,
    idempotency_key   TEXT,
    queue             TEXT    NOT NULL,
    name              TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 0,
    weight            REAL    NOT NULL DEFAULT 0,
    size              REAL    NOT NULL DEFAULT 1,
    args              BLOB    NOT NULL,
    n_deps            INTEGER NOT NULL DEFAULT 0,
    deps_remaining    INTEGER NOT NULL DEFAULT 0,
    forward_to        INTEGER,
    max_attempts      INTEGER NOT NULL DEFAULT 1,
    backoff           REAL    NOT NULL DEFAULT 1,
    max_backoff       REAL    NOT NULL DEFAULT 60,
    timeout           REAL,
    requires          TEXT,
    resources         TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    losses            INTEGER NOT NULL DEFAULT 0,  -- leases lost (node died or hung)
    fence             INTEGER NOT NULL DEFAULT 0,
    node_id           INTEGER,
    lease_expires_at  REAL,
    ready_at          REAL    NOT NULL DEFAULT 0,  -- eligible from; aging counts from here
    deadline_at       REAL,
    late              INTEGER NOT NULL DEFAULT 0,  -- 1 once a missed deadline was recorded
    req_key           TEXT    NOT NULL DEFAULT '', -- required capabilities, sorted, comma-joined
    limit_key         TEXT,
    created_at        REAL    NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    result            BLOB,
    error             TEXT,
    error_type        TEXT,
    traceback         TEXT
);
-- A re-executed parent finds the children it made before instead of making them again.
CREATE UNIQUE INDEX tasks_child ON tasks (parent_id, seq) WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim path: per queue, requirement class and priority, the oldest ready
-- tasks first; a claim reads a bounded slice of each level, never the queue.
CREATE INDEX tasks_ready ON tasks (queue, req_key, priority, ready_at) WHERE state = 'ready';
-- Deadline tasks are candidates wherever they sit in their level; open tasks
-- past their deadline are found and recorded once, started or not.
CREATE INDEX tasks_deadline_ready ON tasks (queue, deadline_at)
    WHERE state = 'ready' AND deadline_at IS NOT NULL;
CREATE INDEX tasks_overdue ON tasks (deadline_at)
    WHERE late = 0 AND deadline_at IS NOT NULL AND state IN ('pending', 'ready', 'running');
CREATE INDEX tasks_limited ON tasks (limit_key) WHERE state = 'running' AND limit_key IS NOT NULL;
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 'running';
CREATE INDEX tasks_node ON tasks (node_id) WHERE state = 'running';
CREATE INDEX tasks_run ON tasks (run_id, state);

CREATE TABLE deps (
    task_id  INTEGER NOT NULL,
    pos      INTEGER NOT NULL,   -- argument reference index; -1 for a forwarded result
    dep_id   INTEGER NOT NULL,
    PRIMARY KEY (task_id, pos)
);
CREATE INDEX deps_dep ON deps (dep_id);

CREATE TABLE nodes (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    queue         TEXT    NOT NULL,
    slots         INTEGER NOT NULL,
    mode          TEXT    NOT NULL,
    capabilities  TEXT,
    resources     TEXT,
    speed         REAL    NOT NULL DEFAULT 1,
    state         TEXT    NOT NULL DEFAULT 'running',
    started_at    REAL    NOT NULL,
    heartbeat_at  REAL    NOT NULL,
    stopped_at    REAL,
    running       INTEGER NOT NULL DEFAULT 0,
    completed     INTEGER NOT NULL DEFAULT 0
);

-- Concurrency and rate limits shared by every node: a token bucket per key.
CREATE TABLE limits (
    key          TEXT PRIMARY KEY,
    concurrency  INTEGER,
    rate         REAL,
    tokens       REAL    NOT NULL DEFAULT 0,
    refilled_at  REAL    NOT NULL DEFAULT 0
);

CREATE TABLE events (
    id       INTEGER PRIMARY KEY,
    at       REAL    NOT NULL,
    run_id   INTEGER,
    task_id  INTEGER,
    node_id  INTEGER,
    kind     TEXT    NOT NULL,
    detail   TEXT
);
CREATE INDEX events_run ON events (run_id, id);

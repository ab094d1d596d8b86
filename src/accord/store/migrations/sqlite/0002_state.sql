-- accord schema, version 2: the state store (versioned keys, history, leases,
-- snapshots) and messaging (mailboxes and topics).
-- Revisions are global: every write transaction of the state store takes the
-- next one. Times are seconds since the epoch (REAL).

-- One row: the compaction point (history before it may be gone), the
-- automatic retention setting, and the last commit group (see kv_groups).
-- The current revision is the last one in kv_history (compaction keeps every
-- change at or after the compaction point, so the last one stays), which
-- spares each write an update of this row.
CREATE TABLE kv_meta (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    compacted   INTEGER NOT NULL,
    retain      INTEGER,
    last_group  INTEGER NOT NULL
);
INSERT INTO kv_meta (id, compacted, retain, last_group) VALUES (1, 0, NULL, 0);

-- Group commit (embedded store only): a process that commits the writes of
-- other processes records their outcomes in the same commit, so that they
-- can learn them even if it dies before telling them. Recent groups only.
CREATE TABLE kv_groups (
    id        INTEGER PRIMARY KEY,
    outcomes  BLOB    NOT NULL
);

-- The current state. A deleted key keeps its row with value NULL (a
-- tombstone) so that its version keeps counting: versions are never reused.
CREATE TABLE kv (
    key              TEXT    NOT NULL PRIMARY KEY,
    value            BLOB,
    create_revision  INTEGER NOT NULL,
    mod_revision     INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    lease_id         INTEGER
) WITHOUT ROWID;
CREATE INDEX kv_lease ON kv (lease_id) WHERE lease_id IS NOT NULL;

-- Every change, in revision order; seq orders the changes of one revision.
-- kind is 'put' or 'delete' (value NULL).
CREATE TABLE kv_history (
    revision         INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    key              TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    value            BLOB,
    create_revision  INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    lease_id         INTEGER,
    at               REAL    NOT NULL,
    task_id          INTEGER,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE INDEX kv_history_key ON kv_history (key, revision);

-- Leases: keys tied to a lease are deleted once it expires or is revoked.
-- AUTOINCREMENT (SQLite's spelling of an identity column) so that the id of a
-- revoked lease is never handed out again.
CREATE TABLE kv_leases (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    ttl         REAL    NOT NULL,
    expires_at  REAL    NOT NULL,
    granted_at  REAL    NOT NULL,
    task_id     INTEGER
);
CREATE INDEX kv_leases_expiry ON kv_leases (expires_at);

-- Named snapshots: a name for a revision. They hold compaction back.
CREATE TABLE kv_snapshots (
    name        TEXT    NOT NULL PRIMARY KEY,
    revision    INTEGER NOT NULL,
    created_at  REAL    NOT NULL
);

-- Mailboxes: point-to-point messages. A message is delivered to one receiver
-- at a time, again once visible_at passes without an ack; an ack or a nack
-- must name the current delivery (deliveries), so a late one is refused.
-- msg_id is the sender's id: a retried send with the same id is not stored
-- twice. Acknowledged rows keep their id (not their payload) for the
-- de-duplication window.
CREATE TABLE mailbox_messages (
    id           INTEGER PRIMARY KEY,
    mailbox      TEXT    NOT NULL,
    msg_id       TEXT    NOT NULL,
    payload      BLOB,
    checksum     BLOB    NOT NULL,
    size         INTEGER NOT NULL,
    sent_at      REAL    NOT NULL,
    visible_at   REAL    NOT NULL,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    acked_at     REAL,
    task_id      INTEGER
);
CREATE UNIQUE INDEX mailbox_dedup ON mailbox_messages (mailbox, msg_id);
CREATE INDEX mailbox_pending ON mailbox_messages (mailbox, id) WHERE acked_at IS NULL;
CREATE INDEX mailbox_acked ON mailbox_messages (acked_at) WHERE acked_at IS NOT NULL;

-- Topics: broadcast logs. Offsets count from 0 in publish order per topic.
CREATE TABLE topics (
    name          TEXT    NOT NULL PRIMARY KEY,
    next_offset   INTEGER NOT NULL,
    first_offset  INTEGER NOT NULL
);

CREATE TABLE topic_messages (
    topic         TEXT    NOT NULL,
    seq           INTEGER NOT NULL,   -- the offset
    msg_id        TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    checksum      BLOB    NOT NULL,
    published_at  REAL    NOT NULL,
    task_id       INTEGER,
    PRIMARY KEY (topic, seq)
);
CREATE UNIQUE INDEX topic_dedup ON topic_messages (topic, msg_id);

-- Each registered subscriber's next offset to read.
CREATE TABLE topic_offsets (
    topic        TEXT    NOT NULL,
    subscriber   TEXT    NOT NULL,
    next_offset  INTEGER NOT NULL,
    updated_at   REAL    NOT NULL,
    PRIMARY KEY (topic, subscriber)
);

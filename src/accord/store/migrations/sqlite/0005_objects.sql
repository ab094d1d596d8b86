-- The object store's catalogue (accord.data): one row per object, whatever
-- holds its bytes. touched_at is the last put of the object: the collector
-- never takes an object touched within its grace period, so a value between
-- its put and the commit that references it is safe. Chunks hold the bytes of
-- objects kept in the database itself; a chunk whose digest is 'upload:...'
-- belongs to a put not yet committed.
CREATE TABLE objects (
    digest      TEXT    NOT NULL PRIMARY KEY,
    size        INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    location    TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    touched_at  REAL    NOT NULL,
    pinned      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX objects_touched ON objects (touched_at);

CREATE TABLE object_chunks (
    digest      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    data        BLOB    NOT NULL,
    written_at  REAL    NOT NULL,
    PRIMARY KEY (digest, seq)
);

-- How many leases a task may lose (its node died or hung) before it fails:
-- the task option lease_losses, 3 unless the task says otherwise.
ALTER TABLE tasks ADD COLUMN max_losses INTEGER NOT NULL DEFAULT 3;
-- (Ready tasks are claimed in the order they became ready, then by id: on
-- SQLite the id is the rowid, which every index already ends with.)

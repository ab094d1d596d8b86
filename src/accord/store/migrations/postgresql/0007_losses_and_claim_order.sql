-- How many leases a task may lose (its node died or hung) before it fails:
-- the task option lease_losses, 3 unless the task says otherwise.
ALTER TABLE tasks ADD COLUMN max_losses BIGINT NOT NULL DEFAULT 3;

-- Ready tasks are claimed in the order they became ready, then by id. Tasks
-- submitted together share a ready time, and PostgreSQL keeps equal index
-- keys in row-version order: a task handed back (its lease expired, or its
-- node released it) got a new row version and went behind every task that
-- shared its ready time. The id in the key keeps its place.
DROP INDEX tasks_ready;
CREATE INDEX tasks_ready ON tasks (queue, req_key, priority, ready_at, id) WHERE state = 'ready';
DROP INDEX tasks_ready_cost;
CREATE INDEX tasks_ready_cost ON tasks (queue, req_key, priority, (weight + size), ready_at, id)
    WHERE state = 'ready';

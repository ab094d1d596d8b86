-- How many leases a task may lose (its node died or hung) before it fails:
-- the task option lease_losses, 3 unless the task says otherwise.
ALTER TABLE tasks ADD COLUMN max_losses BIGINT NOT NULL DEFAULT 3;

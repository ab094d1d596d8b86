-- accord schema for PostgreSQL, version 4: the queue tables churn (every task
-- row is updated a few times within seconds), so their dead row versions are
-- cleaned and their statistics refreshed long before PostgreSQL's defaults
-- (20% of the table) would; stale entries in the ready index slow claims.
ALTER TABLE tasks SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.01,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE nodes SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE mailbox_messages SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);
ALTER TABLE kv_meta SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_delay = 0);

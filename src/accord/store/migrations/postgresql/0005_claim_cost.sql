-- The claim path's second slice of each level: its cheapest ready tasks at
-- speed 1 (weight + size), so that a cheap task behind a long run of dear
-- ones of the same priority is a candidate (docs/scheduling.md).
CREATE INDEX tasks_ready_cost ON tasks (queue, req_key, priority, (weight + size), ready_at)
    WHERE state = 'ready';

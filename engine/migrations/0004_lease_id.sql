-- Each claim's random identity, compared with the fencing token by every fenced write: after a
-- failover to a replica that lacked the last commits, a lost claim's (id, fencing_token) can be
-- handed out again (to another workflow, once the id sequence rolled back, or to another holder),
-- and only the lease id tells the two claims apart (engine/src/store/mod.rs, `Fence`).
ALTER TABLE workflows ADD COLUMN lease_id BIGINT NOT NULL DEFAULT 0;

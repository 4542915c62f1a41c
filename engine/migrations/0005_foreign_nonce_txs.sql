-- Transactions signed with the engine's key that the engine did not send, found on chain at a
-- nonce none of its records names (another holder of the key). Recorded once, so the orphan
-- search, which looks up every nonce below the chain's count that nothing names, does not look
-- this one up again before every transaction.
CREATE TABLE foreign_nonce_txs (
    tx_hash      TEXT        PRIMARY KEY,
    signer       TEXT        NOT NULL,
    chain_id     BIGINT      NOT NULL,
    nonce        BIGINT      NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX foreign_nonce_txs_nonce ON foreign_nonce_txs (signer, chain_id, nonce);
-- The orphan search reads the orphans and the versions by nonce too.
CREATE INDEX orphan_txs_nonce ON orphan_txs (signer, chain_id, nonce);
CREATE INDEX tx_broadcasts_nonce ON tx_broadcasts (nonce);

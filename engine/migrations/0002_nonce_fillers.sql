-- Zero-value self-transfers the engine signs to fill a nonce that no record of its own holds (one
-- used outside the engine and then abandoned, e.g. dropped from the mempool), so the engine's own
-- transactions queued above it are not blocked for ever. Stored before broadcast, like every
-- signed transaction.
CREATE TABLE nonce_fillers (
    tx_hash      TEXT        PRIMARY KEY,
    signer       TEXT        NOT NULL,
    chain_id     BIGINT      NOT NULL,
    nonce        BIGINT      NOT NULL,
    raw          BYTEA       NOT NULL,
    max_fee      TEXT        NOT NULL,
    priority_fee TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX nonce_fillers_nonce ON nonce_fillers (signer, chain_id, nonce);

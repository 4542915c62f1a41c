-- Signed transactions of ours found on chain at a nonce no record holds: their records were lost
-- (an asynchronous replica promoted without the last commits). Each is keyed by the step tag its
-- input ends with, so the step that sent it adopts it instead of sending its effect again.
CREATE TABLE orphan_txs (
    tx_hash      TEXT        PRIMARY KEY,
    signer       TEXT        NOT NULL,
    chain_id     BIGINT      NOT NULL,
    nonce        BIGINT      NOT NULL,
    tag          TEXT        NOT NULL,
    raw          BYTEA       NOT NULL,
    max_fee      TEXT        NOT NULL,
    priority_fee TEXT        NOT NULL,
    adopted_by   BIGINT      REFERENCES transactions(id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orphan_txs_tag ON orphan_txs (signer, chain_id, tag);

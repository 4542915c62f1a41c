-- The engine's durable state. Every write that belongs to a workflow is fenced: it checks the
-- workflow's fencing_token in the same transaction (see engine/src/store/pg.rs).

CREATE TABLE workflows (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT        NOT NULL,
    scope            TEXT        NOT NULL,          -- sender/chain/operation the key is scoped to
    idempotency_key  TEXT        NOT NULL,
    request_hash     TEXT        NOT NULL,          -- same key with a different request is refused
    input            JSONB       NOT NULL,
    status           TEXT        NOT NULL CHECK (status IN ('pending','running','completed','failed','dead_letter','cancelled')),
    current_step     INT         NOT NULL DEFAULT 0,
    state            JSONB       NOT NULL DEFAULT '{}'::jsonb,  -- outputs of completed steps: the checkpoint
    result           JSONB,
    error            JSONB,
    attempts         INT         NOT NULL DEFAULT 0,  -- failed attempts of the current step
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner      TEXT,
    lease_expires_at TIMESTAMPTZ,
    fencing_token    BIGINT      NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX workflows_runnable ON workflows (next_attempt_at, id) WHERE status IN ('pending', 'running');

-- Live idempotency keys (24 h window by default). An expired key may be taken by a new request.
CREATE TABLE idempotency_keys (
    scope           TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    workflow_id     BIGINT      NOT NULL REFERENCES workflows(id),
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, idempotency_key)
);

-- Append-only history of step boundaries.
CREATE TABLE journal (
    workflow_id   BIGINT      NOT NULL REFERENCES workflows(id),
    seq           BIGSERIAL,
    step_index    INT         NOT NULL,
    step_name     TEXT        NOT NULL,
    event         TEXT        NOT NULL,   -- completed | retry | failed | dead_letter | requeued | workflow_completed
    detail        JSONB,
    fencing_token BIGINT      NOT NULL,
    node          TEXT        NOT NULL,
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, seq)
);

-- Nonce manager: the next nonce per (signer, chain), and nonces released by abandoned
-- transactions that must be reused before any new one (so no gap blocks later transactions).
CREATE TABLE nonces (
    signer     TEXT        NOT NULL,
    chain_id   BIGINT      NOT NULL,
    next_nonce BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (signer, chain_id)
);
CREATE TABLE nonce_holes (
    signer   TEXT   NOT NULL,
    chain_id BIGINT NOT NULL,
    nonce    BIGINT NOT NULL,
    PRIMARY KEY (signer, chain_id, nonce)
);

-- One row per transaction step; the signed bytes are stored before any broadcast.
CREATE TABLE transactions (
    id               BIGSERIAL PRIMARY KEY,
    workflow_id      BIGINT      NOT NULL REFERENCES workflows(id),
    step_index       INT         NOT NULL,
    signer           TEXT        NOT NULL,
    chain_id         BIGINT      NOT NULL,
    nonce            BIGINT      NOT NULL,
    state            TEXT        NOT NULL CHECK (state IN ('PREPARING','SIGNING','BROADCASTING','CONFIRMING','COMPLETED','FAILED','DEAD_LETTER','CANCELLED')),
    to_address       TEXT,
    input            BYTEA       NOT NULL,
    value            TEXT        NOT NULL,
    gas_limit        BIGINT      NOT NULL,
    max_fee          TEXT        NOT NULL,
    priority_fee     TEXT        NOT NULL,
    raw              BYTEA,
    tx_hash          TEXT,
    receipt          JSONB,
    failure          TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- At most one live transaction per step; abandoned ones stay on record (any of them may still
-- be mined, so a re-run checks them before sending anything new).
CREATE UNIQUE INDEX transactions_live_step ON transactions (workflow_id, step_index)
    WHERE state NOT IN ('FAILED', 'DEAD_LETTER', 'CANCELLED');
CREATE INDEX transactions_nonce ON transactions (signer, chain_id, nonce);

-- Every signed version (the original and each replacement): any of them may be the one mined.
CREATE TABLE tx_broadcasts (
    tx_id        BIGINT      NOT NULL REFERENCES transactions(id),
    tx_hash      TEXT        NOT NULL,
    nonce        BIGINT      NOT NULL,
    raw          BYTEA       NOT NULL,
    max_fee      TEXT        NOT NULL,
    priority_fee TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, tx_hash)
);

-- Lifecycle history of each transaction, one row per transition.
CREATE TABLE tx_events (
    tx_id  BIGINT      NOT NULL REFERENCES transactions(id),
    seq    BIGSERIAL,
    state  TEXT        NOT NULL,
    detail TEXT,
    at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tx_id, seq)
);

CREATE TABLE dead_letters (
    workflow_id  BIGINT      PRIMARY KEY REFERENCES workflows(id),
    step_index   INT         NOT NULL,
    step_name    TEXT        NOT NULL,
    reason_code  TEXT        NOT NULL,
    reason       TEXT        NOT NULL,
    failed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every operator action: who, what, arguments, reason, outcome.
CREATE TABLE audit_log (
    id      BIGSERIAL   PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT        NOT NULL,
    action  TEXT        NOT NULL,
    args    JSONB       NOT NULL,
    reason  TEXT        NOT NULL,
    outcome TEXT        NOT NULL
);

-- Off-chain side effects (the notify step), made idempotent by their key.
CREATE TABLE notifications (
    workflow_id BIGINT      NOT NULL REFERENCES workflows(id),
    kind        TEXT        NOT NULL,
    payload     JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, kind)
);

-- Chain indexer: blocks indexed (to detect reorgs by hash), events, and a checkpoint.
CREATE TABLE indexer_checkpoint (
    chain_id        BIGINT PRIMARY KEY,
    last_block      BIGINT NOT NULL,
    last_hash       TEXT   NOT NULL,
    finalized_block BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE indexed_blocks (
    chain_id BIGINT NOT NULL,
    number   BIGINT NOT NULL,
    hash     TEXT   NOT NULL,
    PRIMARY KEY (chain_id, number)
);
CREATE TABLE token_events (
    chain_id     BIGINT  NOT NULL,
    block_number BIGINT  NOT NULL,
    block_hash   TEXT    NOT NULL,
    tx_hash      TEXT    NOT NULL,
    log_index    BIGINT  NOT NULL,
    contract     TEXT    NOT NULL,
    from_address TEXT    NOT NULL,
    to_address   TEXT    NOT NULL,
    value        NUMERIC(78, 0) NOT NULL,
    PRIMARY KEY (chain_id, block_hash, log_index)
);
CREATE INDEX token_events_block ON token_events (chain_id, block_number);

-- Balances are derived from events, so a rollback of events is a rollback of balances.
CREATE VIEW token_balances AS
SELECT chain_id, contract, holder, SUM(delta) AS balance
FROM (
    SELECT chain_id, contract, to_address AS holder, value AS delta FROM token_events
    UNION ALL
    SELECT chain_id, contract, from_address AS holder, -value AS delta FROM token_events
) d
WHERE holder <> '0x0000000000000000000000000000000000000000'
GROUP BY chain_id, contract, holder;

-- Ingests sent with an Idempotency-Key: a retry with the same key gets the first result
-- instead of writing again. `pending` while the first attempt runs, and after it if it
-- stopped once its Delta commit was made (that commit carries the key, so a retry finds
-- it in the log). Completed keys are kept a day.
CREATE TABLE idempotency_keys (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    idem_key      TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    response_json TEXT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);

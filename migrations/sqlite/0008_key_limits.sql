-- Limits on one API key (NULL: none beyond its tenant's), set by the tenant's admins or an
-- operator: a key shared by a batch job or a dashboard cannot take its whole tenant's rate.
CREATE TABLE key_limits (
    key_id                   TEXT PRIMARY KEY REFERENCES api_keys (id),
    requests_per_second      REAL,
    burst                    BIGINT,
    max_concurrent_requests  BIGINT,
    updated_at               BIGINT NOT NULL,
    updated_by               TEXT NOT NULL
);

-- Request tokens of every bucket, tenants' (`tenant:<id>`) and keys' (`key:<id>`) alike.
-- Tokens refill by themselves, so moving the tenants' buckets loses nothing that matters.
CREATE TABLE rate_buckets (
    bucket      TEXT PRIMARY KEY,
    tokens      REAL NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO rate_buckets (bucket, tokens, updated_at)
    SELECT 'tenant:' || tenant_id, tokens, updated_at FROM tenant_rate_buckets;
DROP TABLE tenant_rate_buckets;

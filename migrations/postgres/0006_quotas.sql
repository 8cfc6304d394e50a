-- Limits an operator sets per tenant (NULL: the server's default), and the counters that
-- enforce them across replicas.
CREATE TABLE tenant_quotas (
    tenant_id                TEXT PRIMARY KEY REFERENCES tenants (id),
    requests_per_second      DOUBLE PRECISION,
    burst                    BIGINT,
    max_concurrent_requests  BIGINT,
    ingest_bytes_per_day     BIGINT,
    max_concurrent_queries   BIGINT,
    max_running_jobs         BIGINT,
    updated_at               BIGINT NOT NULL,
    updated_by               TEXT NOT NULL
);

-- Each tenant's request tokens: replicas claim them in batches, so a request rarely waits
-- on the database and the rate holds across replicas.
CREATE TABLE tenant_rate_buckets (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants (id),
    tokens      DOUBLE PRECISION NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- Bytes ingested per tenant and UTC day (days since the Unix epoch).
CREATE TABLE tenant_usage (
    tenant_id     TEXT NOT NULL REFERENCES tenants (id),
    day           BIGINT NOT NULL,
    ingest_bytes  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day)
);

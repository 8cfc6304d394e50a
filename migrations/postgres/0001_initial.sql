-- Times are microseconds since the Unix epoch (UTC) in every table.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'writer', 'reader', 'auditor')),
    -- SHA-256 of the whole key; the key itself is shown once and never stored.
    secret_hash  TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE feature_groups (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL REFERENCES tenants (id),
    name               TEXT NOT NULL,
    schema_json        TEXT NOT NULL,
    description        TEXT NOT NULL,
    owner              TEXT NOT NULL,
    tags_json          TEXT NOT NULL,
    online             BOOLEAN NOT NULL,
    -- Relative to the data root, e.g. tenants/default/feature-groups/clicks
    location           TEXT NOT NULL,
    -- creating: catalog row written, Delta table not yet confirmed; active; archived
    state              TEXT NOT NULL CHECK (state IN ('creating', 'active', 'archived')),
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    created_by         TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- The version -> commit time map. Time travel by timestamp resolves through this table,
-- never through object-store file dates.
CREATE TABLE feature_group_versions (
    feature_group_id  TEXT NOT NULL REFERENCES feature_groups (id),
    version           BIGINT NOT NULL,
    committed_at      BIGINT NOT NULL,
    operation         TEXT NOT NULL,
    rows_added        BIGINT,
    actor             TEXT NOT NULL,
    request_id        TEXT,
    -- true when the row was rebuilt from the Delta log at startup after a crash
    recovered         BOOLEAN NOT NULL,
    PRIMARY KEY (feature_group_id, version)
);
CREATE INDEX feature_group_versions_time ON feature_group_versions (feature_group_id, committed_at);

-- Registered models, their versions, aliases with their full history, and training jobs.
CREATE TABLE models (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    owner        TEXT NOT NULL,
    tags_json    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE model_versions (
    model_id           TEXT NOT NULL REFERENCES models (id),
    version            BIGINT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN ('active', 'archived', 'deleted')),
    -- trained here (with training-set lineage) or imported (no lineage claimed)
    source             TEXT NOT NULL CHECK (source IN ('trained', 'imported')),
    -- Relative to the data root
    artifact_location  TEXT NOT NULL,
    artifact_sha256    TEXT NOT NULL,
    -- Ed25519 over the signing statement, by the server's model-signing key
    signature          TEXT NOT NULL,
    signing_key_id     TEXT NOT NULL,
    training_set_id    TEXT,
    -- Training set hash and pinned feature-group versions, as JSON
    lineage_json       TEXT NOT NULL,
    config_json        TEXT NOT NULL,
    metrics_json       TEXT NOT NULL,
    backend            TEXT NOT NULL,
    build_id           TEXT NOT NULL,
    job_id             TEXT,
    created_at         BIGINT NOT NULL,
    created_by         TEXT NOT NULL,
    PRIMARY KEY (model_id, version)
);
CREATE INDEX model_versions_training_set ON model_versions (training_set_id);

CREATE TABLE model_aliases (
    model_id    TEXT NOT NULL REFERENCES models (id),
    alias       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (model_id, alias)
);

-- Every move of every alias, never updated or deleted.
CREATE TABLE model_alias_history (
    model_id      TEXT NOT NULL REFERENCES models (id),
    alias         TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    from_version  BIGINT,
    to_version    BIGINT,
    actor         TEXT NOT NULL,
    reason        TEXT NOT NULL,
    moved_at      BIGINT NOT NULL,
    PRIMARY KEY (model_id, alias, seq)
);

CREATE TABLE training_jobs (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants (id),
    model_name     TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec_json      TEXT NOT NULL,
    progress_json  TEXT NOT NULL,
    error          TEXT,
    model_version  BIGINT,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    created_by     TEXT NOT NULL
);
CREATE INDEX training_jobs_tenant ON training_jobs (tenant_id, created_at);

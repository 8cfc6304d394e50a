-- Online serving: how old an online value may be before it is reported OUTSIDE_MAX_AGE,
-- and canary splits of model aliases.
ALTER TABLE feature_groups ADD COLUMN online_max_age_seconds BIGINT;

-- Every canary an alias has had. At most one per alias is open (ended_at IS NULL).
CREATE TABLE model_canaries (
    model_id     TEXT NOT NULL REFERENCES models (id),
    alias        TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    percent      DOUBLE PRECISION NOT NULL,
    guard_json   TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    started_by   TEXT NOT NULL,
    reason       TEXT NOT NULL,
    ended_at     BIGINT,
    -- promoted, stopped, or rolled back (with the guard's finding)
    end_reason   TEXT,
    ended_by     TEXT,
    PRIMARY KEY (model_id, alias, seq)
);

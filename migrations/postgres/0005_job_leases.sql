-- Training jobs are leased by the replica that runs them: it renews the lease while the job
-- runs; a job whose lease lapsed (its replica died) is failed once, with the reason, by
-- whichever replica notices first. A cancel asked on any replica reaches the one running it.
ALTER TABLE training_jobs ADD COLUMN worker TEXT;
ALTER TABLE training_jobs ADD COLUMN lease_until BIGINT;
ALTER TABLE training_jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;

-- A limit on the bytes a tenant's storage area holds (NULL: none).
ALTER TABLE tenant_quotas ADD COLUMN max_stored_bytes BIGINT;

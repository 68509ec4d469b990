-- Two copies of 100 tenants x 1,000 documents: rlsq_plain without policies, rlsq with the
-- example's policy (forced) and a plpgsql wrapper that names the tenant and reads in one statement.
DROP SCHEMA IF EXISTS rlsq_plain CASCADE; DROP SCHEMA IF EXISTS rlsq CASCADE;
CREATE SCHEMA rlsq_plain; CREATE SCHEMA rlsq;
CREATE TABLE rlsq_plain.documents (tenant_id text NOT NULL, id bigint NOT NULL, project_id bigint, owner text NOT NULL, title text NOT NULL, body text NOT NULL DEFAULT '', updated_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (tenant_id, id));
CREATE INDEX ON rlsq_plain.documents (tenant_id, updated_at DESC, id DESC);
INSERT INTO rlsq_plain.documents SELECT 'tenant-' || t, i, NULL, 'owner', 'title ' || i, repeat('x', 256), now() FROM generate_series(1,100) t, generate_series(1,1000) i ORDER BY i, t;
CREATE TABLE rlsq.documents (LIKE rlsq_plain.documents INCLUDING ALL);
INSERT INTO rlsq.documents SELECT * FROM rlsq_plain.documents;
ALTER TABLE rlsq.documents ENABLE ROW LEVEL SECURITY; ALTER TABLE rlsq.documents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON rlsq.documents USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')) WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));
CREATE FUNCTION rlsq.read_document(p_tenant text, p_id bigint) RETURNS TABLE (id bigint, project_id bigint, owner text, title text, body text)
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('app.tenant_id', p_tenant, true);
  RETURN QUERY SELECT d.id, d.project_id, d.owner, d.title, d.body FROM rlsq.documents d WHERE d.id = p_id;
END $$;
ANALYZE rlsq_plain.documents; ANALYZE rlsq.documents;

-- PostgreSQL Row-Level Security keyed on the tenant the gateway verified (README.md here).
--
-- Run it as the role that owns the tables (the one migrations use), with the schema the app
-- uses first on the search_path:
--
--   psql "postgres://app_owner@db/app" -v ON_ERROR_STOP=1 -f deploy/examples/rls/schema.sql
--
-- Idempotent: a second run changes nothing. Every table carries `tenant_id`; its policy lets a
-- statement see and write only the rows of the tenant the current transaction named with
--
--   SELECT set_config('app.tenant_id', $1, true)   -- SET LOCAL, parameterised
--
-- A transaction that named none sees no rows and can write none: current_setting(…, true)
-- is NULL when the setting was never made in the session, '' after a transaction that made it
-- ended (pooled connections), and NULLIF turns that into NULL too; `tenant_id = NULL` holds for
-- no row.

BEGIN;

-- The role the app connects as: not the owner of the tables, not a superuser, no BYPASSRLS, so
-- the policies filter everything it runs and it cannot switch them off. Creating a role needs
-- CREATEROLE; when the migration role lacks it, an administrator runs once
--   CREATE ROLE rls_app LOGIN PASSWORD '…' NOSUPERUSER NOBYPASSRLS;
-- and this block only warns (run the file again afterwards for the grants).
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rls_app') THEN
    BEGIN
      CREATE ROLE rls_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE WARNING 'role rls_app does not exist and % may not create it: an administrator creates it, then run this file again', current_user;
    END;
  END IF;
END
$$;

-- The tenant column defaults to the transaction's tenant, so inserts need not name it; the
-- policies' WITH CHECK refuses any other value.
CREATE TABLE IF NOT EXISTS projects (
  tenant_id  text        NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), '')
                         CHECK (tenant_id <> ''),
  id         bigint      NOT NULL,
  name       text        NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

CREATE TABLE IF NOT EXISTS documents (
  tenant_id  text        NOT NULL DEFAULT NULLIF(current_setting('app.tenant_id', true), '')
                         CHECK (tenant_id <> ''),
  id         bigint      NOT NULL,
  project_id bigint,
  owner      text        NOT NULL,
  title      text        NOT NULL,
  body       text        NOT NULL DEFAULT '',
  updated_at timestamptz NOT NULL DEFAULT now(),
  -- Every key and index leads with tenant_id: the policy's condition is an index condition.
  PRIMARY KEY (tenant_id, id),
  -- Foreign-key checks bypass RLS; naming tenant_id in the key keeps them inside one tenant.
  FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id)
);

-- "The 50 most recently updated documents" of a tenant, read in index order.
CREATE INDEX IF NOT EXISTS documents_recent ON documents (tenant_id, updated_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS documents_project ON documents (tenant_id, project_id);

-- FORCE: the policies bind the tables' owner too (migrations, maintenance scripts), not only
-- other roles. Only superusers and BYPASSRLS roles are exempt.
ALTER TABLE projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE projects FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON projects;
CREATE POLICY tenant_isolation ON projects
  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE documents FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tenant_isolation ON documents;
CREATE POLICY tenant_isolation ON documents
  USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''))
  WITH CHECK (tenant_id = NULLIF(current_setting('app.tenant_id', true), ''));

-- What the app may do: read and write rows (the policies decide which), nothing else.
DO $$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'rls_app') THEN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO rls_app', current_schema());
    GRANT SELECT, INSERT, UPDATE, DELETE ON projects, documents TO rls_app;
  END IF;
END
$$;

COMMIT;

\set t random(1, 100)
\set i random(1, 1000)
\startpipeline
BEGIN;
SELECT set_config('app.tenant_id', 'tenant-' || :t, true);
SELECT id, project_id, owner, title, body FROM rlsq.documents WHERE id = :i;
COMMIT;
\endpipeline

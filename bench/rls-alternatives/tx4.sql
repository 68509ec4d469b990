\set t random(1, 100)
\set a random(1, 1000)
\set b random(1, 1000)
\set c random(1, 1000)
\startpipeline
BEGIN;
SELECT set_config('app.tenant_id', 'tenant-' || :t, true);
SELECT id, project_id, owner, title, body FROM rlsq.documents WHERE id = :a;
\endpipeline
SELECT id, project_id, owner, title FROM rlsq.documents ORDER BY updated_at DESC, id DESC LIMIT 50;
SELECT id, project_id, owner, title, body FROM rlsq.documents WHERE id = :b;
\startpipeline
UPDATE rlsq.documents SET title = 'title ' || :c, updated_at = now() WHERE id = :c;
COMMIT;
\endpipeline

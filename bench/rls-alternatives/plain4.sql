\set t random(1, 100)
\set a random(1, 1000)
\set b random(1, 1000)
\set c random(1, 1000)
SELECT id, project_id, owner, title, body FROM rlsq_plain.documents WHERE tenant_id = 'tenant-' || :t AND id = :a;
SELECT id, project_id, owner, title FROM rlsq_plain.documents WHERE tenant_id = 'tenant-' || :t ORDER BY updated_at DESC, id DESC LIMIT 50;
SELECT id, project_id, owner, title, body FROM rlsq_plain.documents WHERE tenant_id = 'tenant-' || :t AND id = :b;
UPDATE rlsq_plain.documents SET title = 'title ' || :c, updated_at = now() WHERE tenant_id = 'tenant-' || :t AND id = :c;

\set t random(1, 100)
\set i random(1, 1000)
SELECT id, project_id, owner, title, body FROM rlsq_plain.documents WHERE tenant_id = 'tenant-' || :t AND id = :i;

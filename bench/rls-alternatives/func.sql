\set t random(1, 100)
\set i random(1, 1000)
SELECT * FROM rlsq.read_document('tenant-' || :t, :i);

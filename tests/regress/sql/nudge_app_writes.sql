-- The application writes rows between fits: a later fit and nudge_revert never put a stale
-- vector over them. Each fit starts from the original vectors of the rows earlier fits
-- moved, but a row the application changed since (it no longer holds what the fit wrote)
-- starts from its new value, and nudge_revert leaves it alone. Checked against the same fits
-- on a fresh copy that had the application's values from the start.
-- (Writes *during* a fit wait for it: tests/python/test_safety.py.)
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
RESET client_min_messages;
SET nudge.progress = off;
CREATE SCHEMA appw;
SET search_path = appw, public;
SELECT last_value AS seq_last, is_called AS seq_called FROM nudge.fits_fit_id_seq \gset
SELECT setval('nudge.fits_fit_id_seq', 4000) IS NOT NULL AS seq_set;
CREATE FUNCTION fingerprint(t regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT count(*) || '':'' || md5(string_agg(x::text, E''\n'' ORDER BY x::text)) FROM %s AS x', t) INTO r;
  RETURN r;
END $$;

CREATE TABLE docs AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 40) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                        FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 12) k;
-- query k is relevant to document 3k % 40 + 1: document 4 only to query 1
CREATE TABLE qrels AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k;
CREATE TABLE qrels_without_4 AS SELECT * FROM qrels WHERE doc_id <> 4;

-- == A: the application re-embeds document 4 after fit 1; fit 2 no longer moves it
CREATE TABLE a_docs AS SELECT * FROM docs;
SELECT fit_id AS a1 FROM nudge_fit('a_docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
SELECT count(*) AS fit1_moved_doc4 FROM nudge.fit_backups WHERE fit_id = :a1 AND row_id = '4';
UPDATE a_docs SET embedding = '{0.5,-0.5,0.25,1}' WHERE id = 4;       -- the application
INSERT INTO a_docs VALUES (41, '{1,2,3,4}');                          -- and a new row
SELECT fingerprint('a_docs') AS a_after_app \gset
SELECT fit_id AS a2 FROM nudge_fit('a_docs', 'embedding', 'q', 'qrels_without_4', gamma => 0.3) \gset
SELECT embedding AS doc4_after_fit2 FROM a_docs WHERE id = 4;
-- the same as fit 2 on a copy that had the application's rows from the start
CREATE TABLE a_fresh AS SELECT * FROM docs;
UPDATE a_fresh SET embedding = '{0.5,-0.5,0.25,1}' WHERE id = 4;
INSERT INTO a_fresh VALUES (41, '{1,2,3,4}');
SELECT fingerprint('a_fresh') AS a_fresh_before \gset
SELECT records_changed FROM nudge_fit('a_fresh', 'embedding', 'q', 'qrels_without_4', gamma => 0.3);
SELECT fingerprint('a_docs') = fingerprint('a_fresh') AS fit2_same_as_on_fresh_copy;
-- reverting fit 2, then fit 1: back to what the application left, then to the originals
-- except for the row the application changed, which keeps its value
SELECT nudge_revert(:a2) AS restored;
SELECT fingerprint('a_docs') = :'a_after_app' AS back_to_after_app;
SELECT nudge_revert(:a1) AS restored;
SELECT fingerprint('a_docs') = :'a_fresh_before' AS originals_and_app_value;

-- == B: the same, but fit 2 moves document 4 again: from the application's value
CREATE TABLE b_docs AS SELECT * FROM docs;
SELECT fit_id AS b1 FROM nudge_fit('b_docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
UPDATE b_docs SET embedding = '{0.5,-0.5,0.25,1}' WHERE id = 4;
SELECT fit_id AS b2 FROM nudge_fit('b_docs', 'embedding', 'q', 'qrels', gamma => 0.3) \gset
SELECT original FROM nudge.fit_backups WHERE fit_id = :b2 AND row_id = '4';
CREATE TABLE b_fresh AS SELECT * FROM docs;
UPDATE b_fresh SET embedding = '{0.5,-0.5,0.25,1}' WHERE id = 4;
SELECT fingerprint('b_fresh') AS b_fresh_before \gset
SELECT records_changed FROM nudge_fit('b_fresh', 'embedding', 'q', 'qrels', gamma => 0.3);
SELECT fingerprint('b_docs') = fingerprint('b_fresh') AS fit2_same_as_on_fresh_copy;
SELECT nudge_revert(:b2) > 0 AS reverted, nudge_revert(:b1) > 0 AS reverted;
SELECT fingerprint('b_docs') = :'b_fresh_before' AS originals_and_app_value;

-- == C: the application sets a moved row to NULL, deletes another: revert skips both
CREATE TABLE c_docs AS SELECT * FROM docs;
SELECT fit_id AS c1 FROM nudge_fit('c_docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
UPDATE c_docs SET embedding = NULL WHERE id = 4;
DELETE FROM c_docs WHERE id = 7;
SELECT nudge_revert(:c1) AS restored;
SELECT count(*) FILTER (WHERE embedding IS NULL) AS still_null, count(*) AS rows FROM c_docs;
SELECT setval('nudge.fits_fit_id_seq', :seq_last, :'seq_called'::boolean) IS NOT NULL AS seq_restored;

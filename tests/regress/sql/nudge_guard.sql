-- Guarded refits (nudge_refit(..., guard_queries =>, guard_qrels =>)): the refit is written
-- only if it scores at least the current vectors' guard metric minus guard_tolerance on guard
-- queries no fit trains on. The numbers the guard reports equal nudge_evaluate of the column
-- before and after the write; a rejected refit writes and stages nothing and is recorded.
-- Uses docs_arr, q, qrels and checksum() from nudge_fit.
SET nudge.progress = off;
SET extra_float_digits = 0;
-- (the NOTICE of each guarded refit names its fit id, which depends on the suites run before)
SET client_min_messages = warning;
\set SHOW_CONTEXT never
CREATE FUNCTION t(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE sql;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE TABLE docs_g AS SELECT * FROM docs_arr;
ALTER TABLE docs_g ADD PRIMARY KEY (id);
CREATE TABLE qrels_g AS SELECT * FROM qrels WHERE query_id <= 30;
SELECT checksum('docs_g', 'embedding') AS original \gset

-- Guard queries: 20 queries of their own (ids 1001..), each relevant to its nearest document
-- by cosine as the table stands now: a monitor of today's retrieval.
CREATE FUNCTION cos(a real[], b real[]) RETURNS float8 LANGUAGE sql IMMUTABLE AS $$
  SELECT sum(x::float8 * y::float8) / sqrt(sum(x::float8 * x::float8) * sum(y::float8 * y::float8))
    FROM unnest(a, b) AS u(x, y) $$;
CREATE TABLE gq AS
SELECT 1000 + k AS id,
       ARRAY(SELECT sin((k * 13 % 300 + 1) * j * 0.37 + j + 0.3 * cos(k * j + 1))::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 20) k;
CREATE TABLE gqrels AS
SELECT g.id AS query_id, (SELECT d.id FROM docs_g d ORDER BY cos(d.embedding, g.embedding) DESC, d.id LIMIT 1) AS doc_id
  FROM gq g;

SELECT fit_id AS first_fit FROM nudge_fit('docs_g', 'embedding', 'q', 'qrels_g', gamma => 0.5) \gset
SELECT ndcg AS ndcg_now FROM nudge_evaluate('docs_g', 'embedding', 'gq', 'gqrels') \gset
INSERT INTO qrels_g SELECT * FROM qrels WHERE query_id > 30;

-- a guard the refit passes (tolerance 1: any result): its numbers are nudge_evaluate's of the
-- column before and after the write
SELECT fit_id AS accepted_fit, guard_after AS accepted_after, status, rows_skipped,
       abs(guard_before - :ndcg_now) < 1e-12 AS before_is_evaluate, guard_after IS NOT NULL AS scored
  FROM nudge_refit(:first_fit, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 1) \gset
SELECT :'status' AS status, :'before_is_evaluate' AS before_is_evaluate, :'scored' AS scored;
SELECT abs(ndcg - :accepted_after) < 1e-12 AS after_is_evaluate FROM nudge_evaluate('docs_g', 'embedding', 'gq', 'gqrels');
SELECT status, guard_metric, guard_tolerance, guard_queries, guard_qrels, refit_of = :first_fit AS refit_of
  FROM nudge.fits WHERE fit_id = :accepted_fit;
SELECT nudge_revert(:accepted_fit) > 0 AS reverted;

-- the same refit against a guard it loses on: the monitor's documents are today's nearest ones,
-- and the refit moves other documents in front of some of them
SELECT checksum('docs_g', 'embedding') AS before_rejected \gset
SELECT fit_id AS rejected_fit, status, records_changed > 0 AS computed, rows_skipped, guard_after < guard_before AS worse
  FROM nudge_refit(:first_fit, guard_queries => 'gq', guard_qrels => 'gqrels') \gset
SELECT :'status' AS status, :'computed' AS computed, :rows_skipped AS rows_skipped, :'worse' AS worse;
SELECT checksum('docs_g', 'embedding') = :'before_rejected' AS unchanged;
SELECT status, rows_written, guard_metric, guard_tolerance, guard_after < guard_before AS worse,
       (SELECT count(*) FROM nudge.fit_backups b WHERE b.fit_id = f.fit_id) AS backups
  FROM nudge.fits f WHERE fit_id = :rejected_fit;
SELECT regexp_replace(t('SELECT nudge_revert(' || :rejected_fit || ')'), 'fit \d+', 'fit N') AS t;
-- a tolerance that covers the loss lets it through
SELECT fit_id AS tolerated, status FROM nudge_refit(:first_fit, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 0.5) \gset
SELECT :'status' AS status, checksum('docs_g', 'embedding') <> :'before_rejected' AS written;
SELECT nudge_revert(:tolerated) > 0 AS reverted;

-- staged: the decision is taken before staging; a rejected refit stages nothing
SELECT fit_id AS staged_rejected, status FROM nudge_refit(:first_fit, staged => true, guard_queries => 'gq', guard_qrels => 'gqrels') \gset
SELECT :'status' AS status, count(*) AS staged_rows FROM nudge.fit_staged WHERE fit_id = :staged_rejected;
SELECT fit_id AS staged_fit, status FROM nudge_refit(:first_fit, staged => true, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 1) \gset
SELECT :'status' AS status;
SELECT count(*) > 0 AS has_staged_rows FROM nudge.fit_staged WHERE fit_id = :staged_fit;
SELECT nudge_revert(:staged_fit) >= 0 AS dropped;
-- a dry run reports the guard and writes nothing
SELECT status, guard_after < guard_before AS worse FROM nudge_refit(:first_fit, dry_run => true, guard_queries => 'gq', guard_qrels => 'gqrels');
SELECT checksum('docs_g', 'embedding') = :'before_rejected' AS unchanged;

-- into a target column: the guard compares the target column now with the target after
ALTER TABLE docs_g ADD COLUMN tuned real[];
SELECT fit_id AS target_fit FROM nudge_fit('docs_g', 'embedding', 'q', 'qrels_g', gamma => 0.5, target => 'tuned') \gset
SELECT ndcg AS tuned_now FROM nudge_evaluate('docs_g', 'tuned', 'gq', 'gqrels') \gset
SELECT guard_after AS tuned_after, status, abs(guard_before - :tuned_now) < 1e-12 AS before_is_evaluate
  FROM nudge_refit(:target_fit, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 1) \gset
SELECT :'status' AS status, :'before_is_evaluate' AS before_is_evaluate;
SELECT abs(ndcg - :tuned_after) < 1e-12 AS after_is_evaluate FROM nudge_evaluate('docs_g', 'tuned', 'gq', 'gqrels');

-- bad guards: nothing computed, nothing written
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'q', guard_qrels => 'qrels_g')$$);
CREATE TABLE gq_overlap AS SELECT * FROM q WHERE id <= 3;
CREATE TABLE gqrels_overlap AS SELECT * FROM qrels WHERE query_id <= 3;
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq_overlap', guard_qrels => 'gqrels_overlap')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_qrels => 'gqrels')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq', guard_qrels => 'gqrels', guard_metric => 'ndcg@0')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq', guard_qrels => 'gqrels', guard_metric => 'map')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 'NaN')$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'gq', guard_qrels => 'gqrels', guard_metric => NULL)$$);
SELECT t($$SELECT * FROM nudge_refit(NULL)$$);
SELECT t($$SELECT * FROM nudge_refit($$ || :first_fit || $$, guard_queries => 'no_such_table', guard_qrels => 'gqrels')$$);
SELECT checksum('docs_g', 'embedding') = :'before_rejected' AS unchanged;
SELECT nudge_revert(:first_fit) > 0 AS reverted;
SELECT checksum('docs_g', 'embedding') = :'original' AS originals_back;

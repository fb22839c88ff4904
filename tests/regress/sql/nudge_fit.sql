-- nudge_fit / nudge_evaluate / nudge_revert / nudge_refit on small synthetic tables of
-- real[] and double precision[]: in place, into a target column, dry run, revert, refit.
-- Needs no pgvector: this suite runs on every supported PostgreSQL, with or without it
-- (nudge_vector, nudge_halfvec and nudge_hnsw cover the pgvector types).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
RESET client_min_messages;
SET nudge.progress = off;
SET extra_float_digits = 0;
-- errors of nudge_revert (PL/pgSQL) without their CONTEXT line numbers
\set SHOW_CONTEXT never
-- CREATE EXTENSION nudge did not need pgvector
SELECT count(*) AS pgvector_installed FROM pg_extension WHERE extname = 'vector';

-- 300 documents in 8 dimensions, deterministic.
CREATE TABLE docs_arr AS
SELECT i AS id,
       ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 300) i;
ALTER TABLE docs_arr ADD PRIMARY KEY (id);
-- 60 queries; query k is relevant to document (k * 7) % 300 + 1 (and k = 1..10 also to k + 100).
CREATE TABLE q AS
SELECT k AS id,
       ARRAY(SELECT sin((k * 7 % 300 + 1) * j * 0.37 + j + 0.4 * cos(k * j))::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 60) k;
CREATE TABLE qrels AS
SELECT k AS query_id, k * 7 % 300 + 1 AS doc_id, 1 AS score FROM generate_series(1, 60) k
UNION ALL SELECT k, k + 100, 2 FROM generate_series(1, 10) k;

CREATE FUNCTION checksum(t regclass, col text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT md5(string_agg(id::text || %L || %I::text, %L ORDER BY id)) FROM %s', ':', col, ',', t) INTO r;
  RETURN r;
END $$;
-- Euclidean length of an array
CREATE FUNCTION arr_norm(a anyarray) RETURNS float8 LANGUAGE sql IMMUTABLE
  AS $$ SELECT sqrt(sum(x::float8 * x::float8)) FROM unnest(a) x $$;

-- the same data as double precision[]
CREATE TABLE docs_f8 AS SELECT id, embedding::float8[] AS embedding FROM docs_arr;
ALTER TABLE docs_f8 ADD PRIMARY KEY (id);

-- evaluation before fitting: identical across storage types
SELECT queries, round(ndcg::numeric, 4) AS ndcg, round(recall::numeric, 4) AS recall,
       round(capped_recall::numeric, 4) AS capped_recall, round(mrr::numeric, 4) AS mrr
  FROM nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels');
SELECT round(ndcg::numeric, 4) FROM nudge_evaluate('docs_f8', 'embedding', 'q', 'qrels');
SELECT round(ndcg::numeric, 4) FROM nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels', k => 5, distance => 'inner_product');
SELECT round(ndcg::numeric, 4) FROM nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels', k => 5, distance => 'l2');

SELECT ndcg AS ndcg_before FROM nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels') \gset

-- dry run: reports, records, writes nothing
SELECT checksum('docs_f8', 'embedding') AS before_f8 \gset
SELECT checksum('docs_arr', 'embedding') AS before_arr \gset
SELECT method, round(gamma::numeric, 3) AS gamma, records_changed,
       validation_after >= validation_before AS not_worse
  FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true);
SELECT checksum('docs_f8', 'embedding') = :'before_f8' AS unchanged;
SELECT status, rows_written FROM nudge.fits ORDER BY fit_id DESC LIMIT 1;

-- in place at a fixed gamma, on each type: same number of records changed
SELECT records_changed FROM nudge_fit('docs_arr', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT records_changed FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT checksum('docs_f8', 'embedding') <> :'before_f8' AS changed;
-- NUDGE-N output is unit length
SELECT count(*) AS moved_rows, bool_and(abs(arr_norm(embedding) - 1) < 1e-5) AS unit
  FROM docs_f8 WHERE id IN (SELECT row_id::int FROM nudge.fit_backups b JOIN nudge.fits f USING (fit_id)
                             WHERE f.corpus = 'docs_f8'::regclass);
-- the fitted corpus answers the training queries better
SELECT ndcg > :ndcg_before + 0.2 AS improved FROM nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels');
SELECT ndcg > :ndcg_before + 0.2 AS improved FROM nudge_evaluate('docs_f8', 'embedding', 'q', 'qrels');

-- revert restores every byte
SELECT nudge_revert(fit_id) AS restored FROM nudge.fits WHERE corpus = 'docs_f8'::regclass AND status = 'applied';
SELECT checksum('docs_f8', 'embedding') = :'before_f8' AS restored_exactly;
SELECT status FROM nudge.fits WHERE corpus = 'docs_f8'::regclass ORDER BY fit_id;
SELECT nudge_revert(fit_id) FROM nudge.fits WHERE corpus = 'docs_f8'::regclass AND status = 'reverted';

-- two fits in a row: the second starts from the originals, reverts go newest first
SELECT checksum('docs_arr', 'embedding') AS fitted_once \gset
SELECT records_changed FROM nudge_fit('docs_arr', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT checksum('docs_arr', 'embedding') = :'fitted_once' AS refit_from_originals;
SELECT nudge_revert(min(fit_id)) FROM nudge.fits WHERE corpus = 'docs_arr'::regclass AND status = 'applied';
SELECT nudge_revert(max(fit_id)) > 0 AS ok FROM nudge.fits WHERE corpus = 'docs_arr'::regclass AND status = 'applied';
SELECT nudge_revert(max(fit_id)) > 0 AS ok FROM nudge.fits WHERE corpus = 'docs_arr'::regclass AND status = 'applied';
SELECT checksum('docs_arr', 'embedding') = :'before_arr' AS arr_back_to_original_values;

-- double precision[] values that real cannot hold: backups, refits and reverts keep every bit
CREATE TABLE docs_f8x AS
SELECT id, ARRAY(SELECT x + 1e-12 * id FROM unnest(embedding) x) AS embedding FROM docs_f8;
ALTER TABLE docs_f8x ADD PRIMARY KEY (id);
CREATE TABLE docs_f8x_before AS SELECT * FROM docs_f8x;
SELECT count(*) AS not_real FROM docs_f8x WHERE embedding <> embedding::real[]::float8[];
SELECT records_changed FROM nudge_fit('docs_f8x', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT checksum('docs_f8x', 'embedding') AS fitted_f8x \gset
SELECT count(*) AS backups, count(*) FILTER (WHERE b.original_double = d.embedding) AS exact
  FROM nudge.fit_backups b JOIN docs_f8x_before d ON d.id = b.row_id::int
 WHERE b.corpus = 'docs_f8x'::regclass AND b.original IS NULL;
SELECT records_changed FROM nudge_fit('docs_f8x', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT checksum('docs_f8x', 'embedding') = :'fitted_f8x' AS refit_from_originals;
SELECT nudge_revert(max(fit_id)) > 0 AS ok FROM nudge.fits WHERE corpus = 'docs_f8x'::regclass AND status = 'applied';
SELECT nudge_revert(max(fit_id)) > 0 AS ok FROM nudge.fits WHERE corpus = 'docs_f8x'::regclass AND status = 'applied';
SELECT count(*) AS rows, count(*) FILTER (WHERE a.embedding = b.embedding) AS restored_exactly
  FROM docs_f8x a JOIN docs_f8x_before b USING (id);

-- target column: filled for every row, source untouched
CREATE TABLE docs_t AS SELECT * FROM docs_arr;
ALTER TABLE docs_t ADD COLUMN nudged real[];
SELECT records_changed FROM nudge_fit('docs_t', 'embedding', 'q', 'qrels', gamma => 0.2, target => 'nudged');
SELECT checksum('docs_t', 'embedding') = :'before_arr' AS source_untouched;
SELECT count(*) AS rows, count(nudged) AS filled, count(*) FILTER (WHERE nudged <> embedding) AS differ FROM docs_t;
SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE target = 'nudged';

-- NUDGE-M, the reference gamma rules, a seeded split that is deterministic
SELECT method, records_changed FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 0.3, dry_run => true);
SELECT a.gamma = b.gamma AS same_gamma, a.validation_after = b.validation_after AS same_score
  FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', seed => 7, validation_fraction => 0.25, dry_run => true) a,
       nudge_fit('docs_f8', 'embedding', 'q', 'qrels', seed => 7, validation_fraction => 0.25, dry_run => true) b;
SELECT gamma_search, metric, validation_query_count, train_queries
  FROM nudge.fits ORDER BY fit_id DESC LIMIT 1;
SELECT method, gamma >= 0 AS gamma_ok FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', gamma_search => 'reference', dry_run => true);
SELECT method, gamma >= 0 AS gamma_ok FROM nudge_fit('docs_f8', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma_search => 'reference', dry_run => true);
SELECT jsonb_array_length(curve) > 10 AS has_curve FROM nudge.fits WHERE gamma_search = 'best' ORDER BY fit_id DESC LIMIT 1;

-- refit when new labels arrive: same parameters, current labels, from the originals
CREATE TABLE docs_r AS SELECT * FROM docs_arr;
CREATE TABLE qrels_r AS SELECT * FROM qrels;
SELECT checksum('docs_r', 'embedding') AS before_r \gset
SELECT fit_id AS first_fit, records_changed FROM nudge_fit('docs_r', 'embedding', 'q', 'qrels_r', gamma => 0.2) \gset
SELECT :records_changed AS first_changed;
INSERT INTO qrels_r SELECT k, k * 11 % 300 + 1, 1 FROM generate_series(1, 20) k;
SELECT fit_id AS second_fit, records_changed > :records_changed AS more_changed, gamma
  FROM nudge_refit(:first_fit) \gset
SELECT :'more_changed' AS more_changed, :gamma AS same_fixed_gamma;
SELECT refit_of = :first_fit AS recorded, gamma_search, qrels FROM nudge.fits WHERE fit_id = :second_fit;
-- a dry refit writes nothing
SELECT checksum('docs_r', 'embedding') AS after_refit \gset
SELECT records_changed > 0 AS computed FROM nudge_refit(:first_fit, dry_run => true);
SELECT checksum('docs_r', 'embedding') = :'after_refit' AS unchanged;
SELECT nudge_revert(:second_fit) > 0 AS ok;
SELECT nudge_revert(:first_fit) > 0 AS ok;
SELECT checksum('docs_r', 'embedding') = :'before_r' AS originals_back;
SELECT * FROM nudge_refit(-5);

-- requires: pgvector >= 0.7.0
-- The bad-input matrix, continued for pgvector's types (vector, halfvec; halfvec, sparsevec
-- and 16000-dimension halfvec need pgvector 0.7.0): the limits of pgvector (16000
-- dimensions, halfvec's range), mixed types and dimensions. Same t() as nudge_bad_input:
-- SQLSTATE and message, then whether the corpus is byte-identical and nudge.fits unchanged.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS nudge;
RESET client_min_messages;
SET nudge.progress = off;
CREATE SCHEMA badv;
SET search_path = badv, public;
SELECT last_value AS seq_last, is_called AS seq_called FROM nudge.fits_fit_id_seq \gset
SELECT setval('nudge.fits_fit_id_seq', 2000) IS NOT NULL AS seq_set;

CREATE FUNCTION fingerprint(t regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, E''\n'' ORDER BY x::text)), '''') FROM %s AS x', t)
     INTO r;
  RETURN r;
END $$;

-- 40 documents and 12 queries in 8 dimensions, as vector and halfvec
CREATE TABLE docs AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, 8) j)::vector(8) AS embedding
  FROM generate_series(1, 40) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                        FROM generate_series(1, 8) j)::vector(8) AS embedding
  FROM generate_series(1, 12) k;
CREATE TABLE qrels AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k;
CREATE TABLE hdocs AS SELECT id, embedding::halfvec(8) AS embedding FROM docs;

CREATE TABLE cases (n serial, stmt text, sqlstate text, table_unchanged boolean, fits_unchanged boolean);
CREATE FUNCTION t(stmt text, tbl regclass DEFAULT 'badv.docs') RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text; hint text; state text;
  before text := badv.fingerprint(tbl);
  fits_before bigint := (SELECT count(*) FROM nudge.fits);
  same boolean; same_fits boolean;
BEGIN
  BEGIN
    EXECUTE stmt;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT, state = RETURNED_SQLSTATE;
  END;
  same := badv.fingerprint(tbl) = before;
  same_fits := (SELECT count(*) FROM nudge.fits) = fits_before;
  INSERT INTO badv.cases (stmt, sqlstate, table_unchanged, fits_unchanged) VALUES (stmt, state, same, same_fits);
  RETURN coalesce(state || ': ' || regexp_replace(msg, 'OID \d+', 'OID <oid>', 'g')
                  || CASE WHEN hint <> '' THEN E'\n       HINT: ' || hint ELSE '' END, 'ok')
      || E'\n       -> ' || CASE WHEN same THEN 'table unchanged' ELSE 'table changed' END
      || CASE WHEN same_fits THEN '' ELSE ', fit recorded' END;
END $$;
\pset format unaligned
\pset tuples_only on

-- the good calls
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('hdocs', 'embedding', 'q', 'qrels', dry_run => true)$$, 'hdocs');

-- == pgvector's limits: 16000 dimensions work (vector and halfvec), in place and reverted exactly
CREATE TABLE d16k AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.013 + j)::real FROM generate_series(1, 16000) j)::vector(16000) AS embedding
  FROM generate_series(1, 20) i;
CREATE TABLE q16k AS
SELECT k AS id, ARRAY(SELECT sin((k % 20 + 1) * j * 0.013 + j + 0.2 * cos(k * j))::real FROM generate_series(1, 16000) j)::vector(16000) AS embedding
  FROM generate_series(1, 10) k;
CREATE TABLE qrels16k AS SELECT k AS query_id, k % 20 + 1 AS doc_id FROM generate_series(1, 10) k;
CREATE TABLE h16k AS SELECT id, embedding::halfvec(16000) AS embedding FROM d16k;
SELECT fingerprint('d16k') AS d16k_before \gset
SELECT fingerprint('h16k') AS h16k_before \gset
SELECT t($$SELECT * FROM nudge_fit('d16k', 'embedding', 'q16k', 'qrels16k', gamma => 0.3)$$, 'd16k');
SELECT t($$SELECT * FROM nudge_fit('h16k', 'embedding', 'q16k', 'qrels16k', gamma => 0.3)$$, 'h16k');
SELECT t($$SELECT * FROM nudge_evaluate('h16k', 'embedding', 'q16k', 'qrels16k', k => 3)$$, 'h16k');
SELECT t($$SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE corpus = 'd16k'::regclass$$, 'd16k');
SELECT t($$SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE corpus = 'h16k'::regclass$$, 'h16k');
SELECT fingerprint('d16k') = :'d16k_before' AS vector_16000_reverted_exactly,
       fingerprint('h16k') = :'h16k_before' AS halfvec_16000_reverted_exactly;
-- 16000-dimension queries against an 8-dimension corpus
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q16k', 'qrels16k')$$);
SELECT t($$SELECT * FROM nudge_evaluate('d16k', 'embedding', 'q', 'qrels16k')$$, 'd16k');

-- == halfvec's range (65504): nudged values that overflow it fail in the write, which is undone
CREATE TABLE hbig AS SELECT id, (embedding::real[])::halfvec(8) AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_fit('hbig', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 1000000)$$, 'hbig');
SELECT t($$SELECT * FROM nudge_fit('hbig', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 60000, dry_run => true)$$, 'hbig');
SELECT t($$SELECT * FROM nudge_fit('hbig', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 1000)$$, 'hbig');
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'hbig'::regclass;
UPDATE hbig SET embedding = '[65504,-65504,65504,1,1,1,1,1]' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('hbig', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'hbig');
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'hbig'::regclass;
-- a second fit starts from the originals: it recognises, bit for bit, the halfvec values the
-- first one wrote (rounded to float16), so both leave the same table
SELECT fingerprint('hdocs') AS hdocs_before \gset
SELECT records_changed AS first FROM nudge_fit('hdocs', 'embedding', 'q', 'qrels', gamma => 0.3);
SELECT fingerprint('hdocs') AS hdocs_fitted \gset
SELECT records_changed AS second FROM nudge_fit('hdocs', 'embedding', 'q', 'qrels', gamma => 0.3);
SELECT fingerprint('hdocs') = :'hdocs_fitted' AS same_as_first,
       (SELECT count(*) FROM nudge.fit_backups WHERE corpus = 'hdocs'::regclass) AS backups;
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'hdocs'::regclass AND status = 'applied';
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'hdocs'::regclass AND status = 'applied';
SELECT fingerprint('hdocs') = :'hdocs_before' AS back_to_original;
-- vector's range: float4 overflow is refused before anything is written
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 1e39)$$);

-- == mixed dimensions and types
CREATE TABLE d_nodim (id int, embedding vector);
INSERT INTO d_nodim SELECT id, embedding FROM docs;
UPDATE d_nodim SET embedding = '[1,2,3]' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_nodim', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_nodim');
CREATE TABLE q9 AS SELECT id, (embedding::real[] || 0.5::real)::vector(9) AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q9', 'qrels')$$);
CREATE TABLE qh AS SELECT id, embedding::halfvec(8) AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'qh', 'qrels', gamma => 0.2, dry_run => true)$$);
CREATE TABLE qa AS SELECT id, embedding::real[] AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('hdocs', 'embedding', 'qa', 'qrels', gamma => 0.2, dry_run => true)$$, 'hdocs');
CREATE TABLE d_zero AS SELECT * FROM docs; UPDATE d_zero SET embedding = '[0,0,0,0,0,0,0,0]' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_zero', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_zero');
CREATE TABLE hq_null AS SELECT id, CASE WHEN id = 3 THEN NULL ELSE embedding END AS embedding FROM qh;
SELECT t($$SELECT * FROM nudge_fit('hdocs', 'embedding', 'hq_null', 'qrels', gamma => 0.2)$$, 'hdocs');
CREATE TABLE d_sparse AS SELECT id, embedding::real[]::vector::sparsevec AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_sparse', 'embedding', 'q', 'qrels')$$, 'd_sparse');
CREATE TABLE d_bit AS SELECT id, '10101010'::bit(8) AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_evaluate('d_bit', 'embedding', 'q', 'qrels')$$, 'd_bit');

-- == a target column of the wrong type
CREATE TABLE d_target AS SELECT id, embedding, NULL::vector(4) AS t4, NULL::vector AS t_any, NULL::halfvec(8) AS t_half,
       NULL::real[] AS t_arr, NULL::vector(8) AS t8 FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't4')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_any')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_half')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_arr')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't8')$$, 'd_target');

SELECT count(*) FILTER (WHERE sqlstate IS NOT NULL) AS bad_inputs,
       count(*) FILTER (WHERE sqlstate IS NOT NULL AND table_unchanged AND fits_unchanged) AS left_everything_unchanged,
       count(*) FILTER (WHERE sqlstate LIKE 'XX%') AS internal_errors,
       count(*) FILTER (WHERE sqlstate IS NULL) AS good_inputs
  FROM cases;
SELECT setval('nudge.fits_fit_id_seq', :seq_last, :'seq_called'::boolean) IS NOT NULL AS seq_restored;

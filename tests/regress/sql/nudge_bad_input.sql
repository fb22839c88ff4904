-- The bad-input matrix (real[] and double precision[]: runs without pgvector; pgvector's
-- types are in nudge_bad_input_vector, roles in nudge_privileges). Each case runs through
-- t(), which prints the SQLSTATE, message and hint of the error (or "ok"), then whether the
-- corpus is byte-identical afterwards (an md5 over the text of every row: float4 and float8
-- print exactly) and whether nudge.fits gained a row. Good input sits next to the bad,
-- pgvector style: a case that must work says "ok". The count is at the end.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
RESET client_min_messages;
SET nudge.progress = off;
CREATE SCHEMA bad;
SET search_path = bad, public;
-- deterministic fit ids, whatever ran before (restored at the end)
SELECT last_value AS seq_last, is_called AS seq_called FROM nudge.fits_fit_id_seq \gset
SELECT setval('nudge.fits_fit_id_seq', 1000) IS NOT NULL AS seq_set;

CREATE FUNCTION fingerprint(t regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text;
BEGIN
  EXECUTE format('SELECT count(*) || '':'' || coalesce(md5(string_agg(x::text, E''\n'' ORDER BY x::text)), '''') FROM %s AS x', t)
     INTO r;
  RETURN r;
END $$;
\pset format unaligned
\pset tuples_only on

-- 40 documents and 12 queries in 4 dimensions; query k is relevant to document 3k % 40 + 1
CREATE TABLE docs AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 40) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                        FROM generate_series(1, 4) j) AS embedding
  FROM generate_series(1, 12) k;
CREATE TABLE qrels AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id, 1 AS score FROM generate_series(1, 12) k;
CREATE TABLE cases (n serial, stmt text, sqlstate text, table_unchanged boolean, fits_unchanged boolean);
-- t(statement, corpus): run it, report the error and what it left behind
CREATE FUNCTION t(stmt text, tbl regclass DEFAULT 'bad.docs') RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text; hint text; state text;
  before text := bad.fingerprint(tbl);
  fits_before bigint := (SELECT count(*) FROM nudge.fits);
  same boolean; same_fits boolean;
BEGIN
  BEGIN
    EXECUTE stmt;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT, state = RETURNED_SQLSTATE;
  END;
  same := bad.fingerprint(tbl) = before;
  same_fits := (SELECT count(*) FROM nudge.fits) = fits_before;
  INSERT INTO bad.cases (stmt, sqlstate, table_unchanged, fits_unchanged) VALUES (stmt, state, same, same_fits);
  RETURN coalesce(state || ': ' || regexp_replace(msg, 'OID \d+', 'OID <oid>', 'g')
                  || CASE WHEN hint <> '' THEN E'\n       HINT: ' || hint ELSE '' END, 'ok')
      || E'\n       -> ' || CASE WHEN same THEN 'table unchanged' ELSE 'table changed' END
      || CASE WHEN same_fits THEN '' ELSE ', fit recorded' END;
END $$;
-- the good call, dry run: every bad case below differs from it in one thing
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true)$$);

-- == misspelt or missing tables and columns
SELECT t($$SELECT * FROM nudge_fit('doc', 'embedding', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'queries', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrel')$$);
SELECT t($$SELECT * FROM nudge_fit('pg_catalog.docs', 'embedding', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'Embedding', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', '"embedding"', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', id_column => 'ctid')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', id_column => '')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', target => 'nudged')$$);
CREATE TABLE q_noemb AS SELECT id, embedding AS emb FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_noemb', 'qrels')$$);
CREATE TABLE q_noid AS SELECT id AS qid, embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_noid', 'qrels')$$);
CREATE TABLE qrels_nodoc AS SELECT query_id, doc_id AS document FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_nodoc')$$);
CREATE TABLE qrels_noquery AS SELECT query_id AS q, doc_id FROM qrels;
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels_noquery')$$);

-- == wrong column types and kinds of relation
CREATE TABLE d_text AS SELECT id, embedding::text AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_text', 'embedding', 'q', 'qrels')$$, 'd_text');
CREATE TABLE d_int AS SELECT id, embedding::int[] AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_int', 'embedding', 'q', 'qrels')$$, 'd_int');
CREATE TABLE d_numeric AS SELECT id, embedding::numeric[] AS embedding FROM docs;
SELECT t($$SELECT * FROM nudge_evaluate('d_numeric', 'embedding', 'q', 'qrels')$$, 'd_numeric');
CREATE TABLE q_f8 AS SELECT id, embedding::float8[] AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_f8', 'qrels', dry_run => true)$$);
CREATE TABLE qrels_textscore AS SELECT query_id, doc_id, CASE WHEN query_id = 5 THEN 'high' ELSE '1' END AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_textscore')$$);
CREATE TABLE qrels_boolscore AS SELECT query_id, doc_id, true AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_boolscore')$$);
CREATE TABLE d_target AS SELECT id, embedding, NULL::float8[] AS t_f8, NULL::text AS t_text, NULL::real[] AS t_real FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_f8')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_text')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 'id')$$, 'd_target');
SELECT t($$SELECT * FROM nudge_fit('d_target', 'embedding', 'q', 'qrels', gamma => 0.2, target => 't_real')$$, 'd_target');
CREATE MATERIALIZED VIEW d_matview AS SELECT * FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_matview', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_matview');
SELECT t($$SELECT * FROM nudge_fit('d_matview', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true)$$, 'd_matview');
CREATE SEQUENCE d_seq;
SELECT t($$SELECT * FROM nudge_fit('d_seq', 'embedding', 'q', 'qrels')$$);
-- == NULL arguments: nudge_fit refuses them; the other functions answer no row (as STRICT ones do)
SELECT t($$SELECT * FROM nudge_fit(NULL, 'embedding', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', NULL, 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', NULL, 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', id_column => NULL)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => NULL)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => NULL, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => NULL)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => NULL, target => NULL, dry_run => true)$$);
SELECT count(*) AS rows_from_strict_functions
  FROM (SELECT * FROM nudge_evaluate(NULL, 'embedding', 'q', 'qrels')
        UNION ALL SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', k => NULL)) s;
SELECT nudge_revert(NULL) IS NULL AS revert_of_null_is_null;

-- == NULL values
CREATE TABLE q_nullemb AS SELECT id, CASE WHEN id = 4 THEN NULL ELSE embedding END AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_nullemb', 'qrels')$$);
CREATE TABLE q_nullid AS SELECT CASE WHEN id = 4 THEN NULL ELSE id END AS id, embedding FROM q;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_nullid', 'qrels')$$);
CREATE TABLE d_nullemb AS SELECT * FROM docs; UPDATE d_nullemb SET embedding = NULL WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_nullemb', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_nullemb');
CREATE TABLE d_nullid AS SELECT * FROM docs; UPDATE d_nullid SET id = NULL WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_nullid', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_nullid');
CREATE TABLE d_nullelem AS SELECT * FROM docs; UPDATE d_nullelem SET embedding[3] = NULL WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_nullelem', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_nullelem');
CREATE TABLE qrels_nulldoc AS SELECT query_id, CASE WHEN query_id = 4 THEN NULL ELSE doc_id END AS doc_id FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_nulldoc')$$);
CREATE TABLE qrels_nullscore AS SELECT query_id, doc_id, NULL::int AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_nullscore', gamma => 0.2, dry_run => true)$$);

-- == NaN, infinities and values real cannot hold
CREATE TABLE d_nan AS SELECT * FROM docs; UPDATE d_nan SET embedding[2] = 'NaN' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_nan', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_nan');
CREATE TABLE q_neginf AS SELECT * FROM q; UPDATE q_neginf SET embedding[4] = '-Infinity' WHERE id = 7;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_neginf', 'qrels')$$);
CREATE TABLE d_f8big AS SELECT id, embedding::float8[] AS embedding FROM docs; UPDATE d_f8big SET embedding[1] = 1e300 WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_f8big', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_f8big');
CREATE TABLE qrels_nanscore AS SELECT query_id, doc_id, CASE WHEN query_id = 4 THEN 'NaN'::float8 ELSE 1 END AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_nanscore')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 1e300)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => 1e6, dry_run => true)$$);

-- == zero, empty and malformed vectors
CREATE TABLE d_zero AS SELECT * FROM docs; UPDATE d_zero SET embedding = '{0,0,0,0}' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_zero', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_zero');
CREATE TABLE q_zero AS SELECT * FROM q; UPDATE q_zero SET embedding = '{0,0,0,0}' WHERE id = 7;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_zero', 'qrels', dry_run => true)$$);
CREATE TABLE d_emptyarr AS SELECT * FROM docs; UPDATE d_emptyarr SET embedding = '{}' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_emptyarr', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_emptyarr');
CREATE TABLE d_2d AS SELECT * FROM docs; UPDATE d_2d SET embedding = '{{1,2},{3,4}}' WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_2d', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_2d');
CREATE TABLE d_lbound AS SELECT * FROM docs; UPDATE d_lbound SET embedding = ('[0:3]=' || embedding::text)::real[];
SELECT t($$SELECT * FROM nudge_fit('d_lbound', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true)$$, 'd_lbound');

-- == dimensions that do not agree
CREATE TABLE d_dim AS SELECT * FROM docs; UPDATE d_dim SET embedding = embedding[1:3] WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_dim', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_dim');
CREATE TABLE q_dim AS SELECT * FROM q; UPDATE q_dim SET embedding = embedding || 0.5::real WHERE id = 7;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_dim', 'qrels')$$);
CREATE TABLE q_dim3 AS SELECT id, embedding[1:3] AS embedding FROM q;
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q_dim3', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_queries => 'q_dim3', validation_qrels => 'qrels')$$);

-- == empty tables and too little to fit
CREATE TABLE d_empty AS SELECT * FROM docs LIMIT 0;
SELECT t($$SELECT * FROM nudge_fit('d_empty', 'embedding', 'q', 'qrels')$$, 'd_empty');
CREATE TABLE q_empty AS SELECT * FROM q LIMIT 0;
CREATE TABLE qrels_empty AS SELECT * FROM qrels LIMIT 0;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_empty', 'qrels_empty')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_empty')$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q_empty', 'qrels_empty')$$);
CREATE TABLE q_one AS SELECT * FROM q WHERE id = 1;
CREATE TABLE qrels_one AS SELECT * FROM qrels WHERE query_id = 1;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_one', 'qrels_one')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_one', 'qrels_one', gamma => 0.2, validation_queries => 'q_empty', validation_qrels => 'qrels_empty', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_queries => 'q_empty', validation_qrels => 'qrels_empty')$$);
CREATE TABLE qrels_negative AS SELECT query_id, doc_id, -1 AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_negative', gamma => 0.2)$$);

-- == labels that point nowhere
CREATE TABLE qrels_unknown_doc AS SELECT * FROM qrels UNION ALL SELECT 2, 4000, 1;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_unknown_doc')$$);
CREATE TABLE qrels_unknown_query AS SELECT * FROM qrels UNION ALL SELECT 99, 5, 1;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_unknown_query')$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels_unknown_query')$$);
CREATE TABLE qrels_text_ids AS SELECT query_id::text, lpad(doc_id::text, 3, '0') AS doc_id FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_text_ids')$$);
CREATE TABLE qrels_text_ok AS SELECT query_id::text, doc_id::text FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_text_ok', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_one', 'qrels_one', validation_queries => 'q', validation_qrels => 'qrels_unknown_doc')$$);

-- == duplicate and ambiguous ids
CREATE TABLE d_duplabelled AS SELECT * FROM docs UNION ALL SELECT * FROM docs WHERE id = 4;
SELECT t($$SELECT * FROM nudge_fit('d_duplabelled', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_duplabelled');
CREATE TABLE d_dupother AS SELECT * FROM docs UNION ALL SELECT * FROM docs WHERE id = 39;
SELECT t($$SELECT * FROM nudge_fit('d_dupother', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true)$$, 'd_dupother');
CREATE TABLE q_dup AS SELECT * FROM q UNION ALL SELECT * FROM q WHERE id = 7;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_dup', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q_dup', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_one', 'qrels_one', validation_queries => 'q_dup', validation_qrels => 'qrels')$$);
CREATE TABLE qrels_dup AS SELECT * FROM qrels UNION ALL SELECT * FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_dup', dry_run => true)$$);
CREATE TABLE d_numid AS SELECT id::numeric(6,1) AS id, embedding FROM docs;
SELECT t($$SELECT * FROM nudge_fit('d_numid', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'd_numid');

-- == bad parameters
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => '')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => 'NUDGE_M', gamma => 0.2, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', metric => 'ndcg@')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', metric => 'ndcg@-1')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', metric => 'ndcg@99999999999999999999')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', metric => 'mrr@4294967296', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', metric => 'ndcg@10; DROP TABLE bad.docs')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 'Infinity')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => '-Infinity')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', method => 'nudge_m', gamma => -0.5)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 4.000001)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 4, negative_rule => 'move', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => 'NaN')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => -0.1)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => 1e-9, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', seed => -2147483648)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', seed => 2147483647, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma_search => '')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', negative_rule => 'SKIP ')$$);
-- k folds (the default without validation tables: 10, at most one per labelled query) and
-- the update from every label
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 1)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 13)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, validation_queries => 'q', validation_qrels => 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, validation_fraction => 0.2)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, gamma => 0.2)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, gamma_search => 'reference')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', folds => 3, update_from => 'train')$$);
CREATE TABLE qrels_zero AS SELECT query_id, doc_id, CASE WHEN query_id = 1 THEN 1 ELSE 0 END AS score FROM qrels;
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels_zero', folds => 2)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => 0.25, update_from => 'all', dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_queries => 'q', validation_qrels => 'qrels', validation_fraction => 0.25)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', update_from => 'everything')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', update_from => 'all', gamma => 0.2)$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', k => -5)$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', k => 2147483647)$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', distance => 'L2')$$);
SELECT t($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', distance => '<=>')$$);
SELECT t($$SET nudge.batch_rows = 0$$);
SELECT t($$SET nudge.threads = -1$$);
SELECT t($$SET nudge.progress_interval = 'NaN'$$);

-- == hostile identifiers: quotes, semicolons, spaces, mixed case, schemas (these must work)
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Docs; DROP TABLE bad.docs; --" ("Id" int PRIMARY KEY, "Emb ""quoted""" real[], "Target;" real[]);
INSERT INTO "Odd Schema"."Docs; DROP TABLE bad.docs; --" SELECT id, embedding FROM docs;
CREATE TABLE "Odd Schema"."Q'uote" AS SELECT * FROM q;
CREATE TABLE "Odd Schema"."QRels" AS SELECT * FROM qrels;
CREATE TABLE "MixedCase" AS SELECT * FROM docs;
CREATE TABLE mixedcase AS SELECT * FROM docs LIMIT 0;
SELECT t($$SELECT * FROM nudge_fit('"Odd Schema"."Docs; DROP TABLE bad.docs; --"', 'Emb "quoted"', '"Odd Schema"."Q''uote"', '"Odd Schema"."QRels"', id_column => 'Id', gamma => 0.2)$$,
         '"Odd Schema"."Docs; DROP TABLE bad.docs; --"');
SELECT t($$SELECT * FROM nudge_fit('"Odd Schema"."Docs; DROP TABLE bad.docs; --"', 'Emb "quoted"', '"Odd Schema"."Q''uote"', '"Odd Schema"."QRels"', id_column => 'Id', gamma => 0.2, target => 'Target;')$$,
         '"Odd Schema"."Docs; DROP TABLE bad.docs; --"');
SELECT t($$SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE corpus = '"Odd Schema"."Docs; DROP TABLE bad.docs; --"'::regclass AND target IS NULL$$,
         '"Odd Schema"."Docs; DROP TABLE bad.docs; --"');
SELECT (SELECT string_agg("Id" || ':' || "Emb ""quoted"""::text, ',' ORDER BY "Id") FROM "Odd Schema"."Docs; DROP TABLE bad.docs; --")
     = (SELECT string_agg(id || ':' || embedding::text, ',' ORDER BY id) FROM docs) AS hostile_reverted_exactly;
SELECT count(*) = 40 AS target_filled FROM "Odd Schema"."Docs; DROP TABLE bad.docs; --" WHERE "Target;" IS NOT NULL;
SELECT t($$SELECT * FROM nudge_fit('"Odd Schema"."Docs; DROP TABLE bad.docs; --"', 'Emb ""quoted""', 'q', 'qrels', id_column => 'Id')$$);
SELECT t($$SELECT * FROM nudge_fit('MixedCase', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'mixedcase');
SELECT t($$SELECT * FROM nudge_fit('"MixedCase"', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true)$$, '"MixedCase"');
SELECT t($$SELECT * FROM nudge_fit('bad.docs''; DROP TABLE bad.docs; --', 'embedding', 'q', 'qrels')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding; DROP TABLE bad.docs', 'q', 'qrels')$$);
SELECT count(*) AS docs_still_there FROM docs;

-- == nudge_revert and nudge_refit on fits that cannot be reverted or rerun
CREATE TABLE r_docs AS SELECT *, NULL::real[] AS nudged FROM docs;
SELECT fit_id AS applied FROM nudge_fit('r_docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
SELECT fit_id AS dry FROM nudge_fit('r_docs', 'embedding', 'q', 'qrels', gamma => 0.2, dry_run => true) \gset
SELECT fit_id AS into_target FROM nudge_fit('r_docs', 'embedding', 'q', 'qrels', gamma => 0.2, target => 'nudged') \gset
SELECT fit_id AS second FROM nudge_fit('r_docs', 'embedding', 'q', 'qrels', gamma => 0.3) \gset
SELECT :applied AS applied, :dry AS dry, :into_target AS into_target, :second AS second;
SELECT t('SELECT nudge_revert(' || :dry || ')', 'r_docs');
SELECT t('SELECT nudge_revert(' || :into_target || ')', 'r_docs');
SELECT t('SELECT nudge_revert(' || :applied || ')', 'r_docs');
SELECT t('SELECT nudge_revert(' || :second || ')', 'r_docs');
SELECT t('SELECT nudge_revert(' || :second || ')', 'r_docs');
SELECT t('SELECT nudge_revert(-9223372036854775808)', 'r_docs');
SELECT t('SELECT * FROM nudge_refit(0)', 'r_docs');
ALTER TABLE r_docs ALTER COLUMN embedding TYPE float8[];
SELECT t('SELECT nudge_revert(' || :applied || ')', 'r_docs');
ALTER TABLE r_docs ALTER COLUMN embedding TYPE real[];
ALTER TABLE r_docs RENAME COLUMN id TO ident;
SELECT t('SELECT nudge_revert(' || :applied || ')', 'r_docs');
SELECT t('SELECT * FROM nudge_refit(' || :applied || ', dry_run => true)', 'r_docs');
ALTER TABLE r_docs RENAME COLUMN ident TO id;
SELECT t('SELECT nudge_revert(' || :applied || ')', 'r_docs');
CREATE TABLE r_gone AS SELECT * FROM docs;
CREATE TABLE q_gone AS SELECT * FROM q;
SELECT fit_id AS gone FROM nudge_fit('r_gone', 'embedding', 'q_gone', 'qrels', gamma => 0.2) \gset
DROP TABLE q_gone;
SELECT t('SELECT * FROM nudge_refit(' || :gone || ')', 'r_gone');
DROP TABLE r_gone;
SELECT t('SELECT nudge_revert(' || :gone || ')', 'docs');
DELETE FROM nudge.fits WHERE fit_id = :gone;

-- == lock: 'rows' (the default, online) or 'table' (strict), any case; anything else is
-- refused before the fit reads or locks anything
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', lock => 'tables')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', lock => 'share row exclusive')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', lock => '')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', lock => NULL)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true, lock => 'TABLE')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true, lock => 'Rows')$$);
SELECT t($$SELECT * FROM nudge_refit(0, lock => 'none')$$);
SELECT t($$SELECT nudge_revert(0, lock => 'row')$$);
SELECT nudge_revert(0, lock => NULL) IS NULL AS revert_with_null_lock_is_null;

-- == staged => true: the fit is computed and kept in nudge.fit_staged, the table untouched;
-- CALL nudge_apply writes it in short transactions (not inside a transaction block: it
-- commits). Not with a dry run, a target column or lock => 'table'; while a fit of a column
-- is staged, no other fit of it starts
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', staged => true, dry_run => true)$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', staged => true, target => 'embedding')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', staged => true, lock => 'table')$$);
SELECT t($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', staged => NULL)$$);
CREATE TABLE r_staged AS SELECT * FROM docs;
SELECT t($$SELECT * FROM nudge_fit('r_staged', 'embedding', 'q', 'qrels', gamma => 0.2, staged => true)$$, 'r_staged');
SELECT currval('nudge.fits_fit_id_seq') AS staged \gset
SELECT status, rows_written, records_changed = (SELECT count(*) FROM nudge.fit_staged s WHERE s.fit_id = f.fit_id) AS all_staged
  FROM nudge.fits f WHERE fit_id = :staged;
SELECT t($$SELECT * FROM nudge_fit('r_staged', 'embedding', 'q', 'qrels', gamma => 0.2)$$, 'r_staged');
SELECT t('SELECT * FROM nudge_refit(' || :staged || ')', 'r_staged');
SELECT t('CALL nudge_apply(' || :staged || ', 0)', 'r_staged');
SELECT t('CALL nudge_apply(' || :staged || ')', 'r_staged');
SELECT t('CALL nudge_apply(NULL)', 'r_staged');
SELECT t('CALL nudge_apply(0)', 'r_staged');
SELECT t('CALL nudge_apply(1001)', 'r_staged');
CALL nudge_apply(:staged, batch_rows => 2);
SELECT status, rows_written = records_changed AS all_written, rows_skipped FROM nudge.fits WHERE fit_id = :staged;
SELECT t('CALL nudge_apply(' || :staged || ')', 'r_staged');
SELECT nudge_revert(:staged) > 0 AS reverted;
SELECT t('SELECT * FROM nudge_refit(' || :staged || ', staged => true)', 'r_staged');
SELECT status, refit_of = :staged AS refit FROM nudge.fits WHERE fit_id = currval('nudge.fits_fit_id_seq');
SELECT t('SELECT * FROM nudge_refit(' || :staged || ', staged => true, dry_run => true)', 'r_staged');
SELECT nudge_revert(currval('nudge.fits_fit_id_seq')) = 0 AS staged_refit_dropped;
DELETE FROM nudge.fits WHERE refit_of = :staged;
DELETE FROM nudge.fits WHERE fit_id = :staged;
DROP TABLE r_staged;

-- == what the matrix tried: every bad input failed with a specific SQLSTATE (never the
-- internal-error class XX) and left its table and nudge.fits as they were
SELECT count(*) FILTER (WHERE sqlstate IS NOT NULL) AS bad_inputs,
       count(DISTINCT sqlstate) AS sqlstates,
       count(*) FILTER (WHERE sqlstate IS NOT NULL AND table_unchanged AND fits_unchanged) AS left_everything_unchanged,
       count(*) FILTER (WHERE sqlstate LIKE 'XX%') AS internal_errors,
       count(*) FILTER (WHERE sqlstate IS NULL) AS good_inputs
  FROM cases;
SELECT setval('nudge.fits_fit_id_seq', :seq_last, :'seq_called'::boolean) IS NOT NULL AS seq_restored;

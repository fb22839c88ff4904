-- Bad input: every call fails with a clear message and SQLSTATE, and the table is
-- byte-identical afterwards. real[] and double precision[] only (no pgvector needed);
-- errors specific to pgvector's types are in nudge_vector and nudge_halfvec.
-- try() runs a statement and shows SQLSTATE, message and hint of its error; the
-- statement's effects are rolled back exactly as for a failed top-level call.
SET nudge.progress = off;
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE msg text; hint text;
BEGIN
  EXECUTE stmt;
  RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
  RETURN SQLSTATE || ': ' || msg || CASE WHEN hint <> '' THEN E'\n       HINT: ' || hint ELSE '' END;
END $$;
\pset format unaligned
\pset tuples_only on
CREATE TABLE e_docs AS SELECT id, embedding FROM docs_arr;
ALTER TABLE e_docs ADD PRIMARY KEY (id);
SELECT checksum('e_docs', 'embedding') AS before \gset

-- misspelt tables and columns
SELECT try($$SELECT * FROM nudge_fit('no_such_table', 'embedding', 'q', 'qrels')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embeding', 'q', 'qrels')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', id_column => 'doc')$$);
-- wrong types
CREATE TABLE e_text AS SELECT id, embedding::text AS embedding FROM e_docs;
SELECT try($$SELECT * FROM nudge_fit('e_text', 'embedding', 'q', 'qrels')$$);
CREATE TABLE e_int AS SELECT id, embedding::int[] AS embedding FROM e_docs;
SELECT try($$SELECT * FROM nudge_evaluate('e_int', 'embedding', 'q', 'qrels')$$);
CREATE TABLE q_text AS SELECT id, embedding::text AS embedding FROM q;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_text', 'qrels')$$);
-- bad parameters
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', method => 'nudge_x')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', metric => 'ndcg@0')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', metric => 'precision@10')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => -1)$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => 'NaN')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => 5)$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', validation_fraction => 1)$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', validation_fraction => 0)$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', seed => -1)$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma_search => 'grid')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', negative_rule => 'flip')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', validation_queries => 'q')$$);
SELECT try($$SELECT * FROM nudge_evaluate('e_docs', 'embedding', 'q', 'qrels', k => 0)$$);
SELECT try($$SELECT * FROM nudge_evaluate('e_docs', 'embedding', 'q', 'qrels', distance => 'hamming')$$);
-- target column problems
ALTER TABLE e_docs ADD COLUMN t_f8 float8[];
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => 0.1, target => 't_f8')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => 0.1, target => 'embedding')$$);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'qrels', gamma => 0.1, target => 'nope')$$);
-- labels pointing nowhere
CREATE TABLE bad_doc_qrels AS SELECT * FROM qrels UNION ALL SELECT 1, 99999, 1;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'bad_doc_qrels', gamma => 0.1)$$);
CREATE TABLE bad_query_qrels AS SELECT * FROM qrels UNION ALL SELECT 777, 5, 1;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'bad_query_qrels', gamma => 0.1)$$);
-- empty training set
CREATE TABLE no_qrels (query_id int, doc_id int, score int);
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'no_qrels', gamma => 0.1)$$);
CREATE TABLE zero_qrels AS SELECT query_id, doc_id, 0 AS score FROM qrels;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q', 'zero_qrels', gamma => 0.1)$$);
-- NULL, NaN and wrong-dimension vectors
CREATE TABLE q_null AS SELECT * FROM q; UPDATE q_null SET embedding = NULL WHERE id = 3;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_null', 'qrels', gamma => 0.1)$$);
CREATE TABLE q_nan AS SELECT * FROM q; UPDATE q_nan SET embedding[2] = 'NaN' WHERE id = 3;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_nan', 'qrels', gamma => 0.1)$$);
CREATE TABLE q_dim AS SELECT * FROM q; UPDATE q_dim SET embedding = embedding[1:7] WHERE id = 3;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_dim', 'qrels', gamma => 0.1)$$);
CREATE TABLE q_dim4 AS SELECT id, embedding[1:4] AS embedding FROM q;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_dim4', 'qrels', gamma => 0.1)$$);
CREATE TABLE d_null AS SELECT * FROM docs_arr; UPDATE d_null SET embedding = NULL WHERE id = 250;
SELECT try($$SELECT * FROM nudge_fit('d_null', 'embedding', 'q', 'qrels', gamma => 0.1)$$);
CREATE TABLE d_inf AS SELECT * FROM docs_arr; UPDATE d_inf SET embedding[1] = 'Infinity' WHERE id = 8;
SELECT try($$SELECT * FROM nudge_fit('d_inf', 'embedding', 'q', 'qrels', gamma => 0.1)$$);
CREATE TABLE d_zero AS SELECT * FROM docs_arr; UPDATE d_zero SET embedding = array_fill(0::real, ARRAY[8]) WHERE id = 8;
SELECT try($$SELECT * FROM nudge_fit('d_zero', 'embedding', 'q', 'qrels', gamma => 0.1)$$);
CREATE TABLE d_dup AS SELECT * FROM docs_arr UNION ALL SELECT * FROM docs_arr WHERE id = 8;
SELECT try($$SELECT * FROM nudge_fit('d_dup', 'embedding', 'q', 'qrels', gamma => 0.1)$$);
CREATE TABLE q_dup AS SELECT * FROM q UNION ALL SELECT * FROM q WHERE id = 3;
SELECT try($$SELECT * FROM nudge_fit('e_docs', 'embedding', 'q_dup', 'qrels', gamma => 0.1)$$);
-- a view can be read (dry run) but not written
-- (a view PostgreSQL cannot update through: DISTINCT; nudge_views fits through updatable ones)
CREATE VIEW e_view AS SELECT DISTINCT * FROM e_docs;
SELECT records_changed > 0 AS ok FROM nudge_fit('e_view', 'embedding', 'q', 'qrels', gamma => 0.1, dry_run => true);
SELECT try($$SELECT * FROM nudge_fit('e_view', 'embedding', 'q', 'qrels', gamma => 0.1)$$);
-- revert of unknown fits
SELECT try($$SELECT nudge_revert(-1)$$);

-- nothing above changed the table
SELECT checksum('e_docs', 'embedding') = :'before' AS unchanged;

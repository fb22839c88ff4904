-- Fits through views: a collection of a shared table (one table, a collection column, every
-- search filtered by it), fitted through an auto-updatable view of it. The fit reads exactly
-- the view's rows and writes only them, through the view (its WHERE clause, WITH CHECK OPTION
-- and security_barrier apply as to any UPDATE through it); every other row stays byte-equal.
-- A fit through the view equals a fit of a table holding only that collection. Uses the
-- tables of nudge_fit (docs_arr, q, qrels).
SET nudge.progress = off;
SET extra_float_digits = 0;
\set SHOW_CONTEXT never
CREATE SCHEMA views;
SET search_path = views, public;

-- two collections in one table: 'a' is docs_arr, 'b' the same ids with other vectors
CREATE TABLE shared (collection text, id int, embedding real[], nudged real[], PRIMARY KEY (collection, id));
INSERT INTO shared SELECT 'a', id, embedding FROM public.docs_arr;
INSERT INTO shared SELECT 'b', id, ARRAY(SELECT x * 0.5 + 0.1 FROM unnest(embedding) x) FROM public.docs_arr;
CREATE VIEW coll_a AS SELECT id, embedding, nudged FROM shared WHERE collection = 'a' WITH CHECK OPTION;
CREATE TABLE only_a AS SELECT id, embedding, nudged FROM shared WHERE collection = 'a';
ALTER TABLE only_a ADD PRIMARY KEY (id);
CREATE FUNCTION rows_of(c text) RETURNS text LANGUAGE sql AS
  $$ SELECT md5(string_agg(id::text || ':' || embedding::text || ':' || coalesce(nudged::text, '-'), ',' ORDER BY id)) FROM views.shared WHERE collection = c $$;
SELECT rows_of('b') AS b_before, rows_of('a') AS a_before \gset

-- the same fit through the view and on the table of the collection alone: the same gamma,
-- metrics and vectors (the default gamma search, then a fixed gamma)
SELECT f.method, round(f.gamma::numeric, 6) AS gamma, f.records_changed,
       round(f.validation_before::numeric, 9) AS before, round(f.validation_after::numeric, 9) AS after
  FROM nudge_fit('coll_a', 'embedding', 'public.q', 'public.qrels', validation_fraction => 0.3, dry_run => true) AS f;
SELECT f.method, round(f.gamma::numeric, 6) AS gamma, f.records_changed,
       round(f.validation_before::numeric, 9) AS before, round(f.validation_after::numeric, 9) AS after
  FROM nudge_fit('only_a', 'embedding', 'public.q', 'public.qrels', validation_fraction => 0.3, dry_run => true) AS f;
SELECT records_changed FROM nudge_fit('coll_a', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
SELECT records_changed FROM nudge_fit('only_a', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
SELECT count(*) AS rows, count(*) FILTER (WHERE v.embedding = t.embedding) AS same_vectors,
       count(*) FILTER (WHERE v.embedding <> a.embedding) AS moved
  FROM coll_a AS v JOIN only_a AS t USING (id) JOIN public.docs_arr AS a USING (id);
SELECT rows_of('b') = :'b_before' AS other_collection_untouched;
SELECT count(*) AS backups FROM nudge.fit_backups b JOIN nudge.fits f USING (fit_id)
 WHERE f.corpus = 'coll_a'::regclass AND f.status = 'applied';

-- evaluation through the view ranks the collection's rows only
SELECT round(ndcg::numeric, 9) = (SELECT round(ndcg::numeric, 9) FROM nudge_evaluate('only_a', 'embedding', 'public.q', 'public.qrels'))
       AS same_metric
  FROM nudge_evaluate('coll_a', 'embedding', 'public.q', 'public.qrels');

-- revert through the view restores the collection exactly; refit; staged + apply; a target column
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'coll_a'::regclass AND status = 'applied';
SELECT rows_of('a') = :'a_before' AS a_restored, rows_of('b') = :'b_before' AS b_untouched;
SELECT fit_id AS staged FROM nudge_fit('coll_a', 'embedding', 'public.q', 'public.qrels', gamma => 0.2, staged => true) \gset
SELECT rows_of('a') = :'a_before' AS nothing_written_yet;
CALL nudge_apply(:staged, 50);
SELECT count(*) AS rows, count(*) FILTER (WHERE v.embedding = t.embedding) AS same_as_table_fit
  FROM coll_a AS v JOIN only_a AS t USING (id);
SELECT nudge_revert(:staged) > 0 AS reverted;
SELECT rows_of('a') = :'a_before' AS a_restored, rows_of('b') = :'b_before' AS b_untouched;
SELECT records_changed > 0 AS changed FROM nudge_fit('coll_a', 'embedding', 'public.q', 'public.qrels', gamma => 0.2, target => 'nudged');
SELECT count(*) FILTER (WHERE nudged IS NULL) AS unfilled, count(*) FILTER (WHERE nudged <> embedding) AS nudged_rows FROM coll_a;
SELECT rows_of('b') = :'b_before' AS b_untouched;
UPDATE shared SET nudged = NULL;

-- a security_barrier view: same
CREATE VIEW coll_a_sb WITH (security_barrier) AS SELECT id, embedding FROM shared WHERE collection = 'a';
SELECT records_changed > 0 AS changed FROM nudge_fit('coll_a_sb', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
SELECT rows_of('b') = :'b_before' AS b_untouched;
SELECT nudge_revert(max(fit_id)) > 0 AS reverted FROM nudge.fits WHERE corpus = 'coll_a_sb'::regclass AND status = 'applied';
SELECT rows_of('a') = :'a_before' AS a_restored;

-- views PostgreSQL cannot update through: refused (42809), nothing written
CREATE VIEW coll_join AS SELECT s.id, s.embedding FROM shared s JOIN only_a o USING (id) WHERE s.collection = 'a';
CREATE VIEW coll_expr AS SELECT id, ARRAY(SELECT x * 2 FROM unnest(embedding) x)::real[] AS embedding FROM shared WHERE collection = 'a';
\set VERBOSITY sqlstate
SELECT * FROM nudge_fit('coll_join', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
SELECT * FROM nudge_fit('coll_expr', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
\set VERBOSITY default
SELECT * FROM nudge_fit('coll_join', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
SELECT * FROM nudge_fit('coll_expr', 'embedding', 'public.q', 'public.qrels', gamma => 0.2);
-- (a dry run through them is fine: it only reads)
SELECT records_changed > 0 AS fitted FROM nudge_fit('coll_join', 'embedding', 'public.q', 'public.qrels', gamma => 0.2, dry_run => true);
SELECT rows_of('a') = :'a_before' AS a_untouched, rows_of('b') = :'b_before' AS b_untouched;

-- a table with its own integer id beside the document ids the labels use (LlamaIndex's
-- data_<name> keeps them in node_id): the error names the column that holds every label
CREATE TABLE nodes AS SELECT id + 5000 AS id, 'node-' || id AS node_id, embedding FROM public.docs_arr;
CREATE TABLE qrels_nodes AS SELECT query_id, 'node-' || doc_id AS doc_id, score FROM public.qrels;
SELECT * FROM nudge_fit('nodes', 'embedding', 'public.q', 'qrels_nodes', gamma => 0.2);
SELECT records_changed FROM nudge_fit('nodes', 'embedding', 'public.q', 'qrels_nodes', id_column => 'node_id', gamma => 0.2);

RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA views CASCADE;
RESET client_min_messages;

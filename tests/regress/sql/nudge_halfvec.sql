-- requires: pgvector >= 0.7.0
-- pgvector's halfvec type (pgvector 0.7.0 or later): values decode exactly as pgvector's
-- halfvec -> real[] cast gives them, fits write halfvec and revert byte for byte.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;
SET nudge.progress = off;
SET extra_float_digits = 0;

CREATE TABLE docs_half AS SELECT id, embedding::halfvec(8) AS embedding FROM docs_arr;
ALTER TABLE docs_half ADD PRIMARY KEY (id);
-- the same (rounded) values as real[]
CREATE TABLE docs_half_arr AS SELECT id, embedding::real[] AS embedding FROM docs_half;

-- evaluation: what real[] gives on the rounded values; close to the float4 original
SELECT round(h.ndcg::numeric, 2) AS ndcg, h.ndcg = a.ndcg AND h.mrr = a.mrr AS same_as_cast_values
  FROM nudge_evaluate('docs_half', 'embedding', 'q', 'qrels') h,
       nudge_evaluate('docs_half_arr', 'embedding', 'q', 'qrels') a;
SELECT ndcg AS ndcg_before FROM nudge_evaluate('docs_half', 'embedding', 'q', 'qrels') \gset

-- in place, revert exact
SELECT checksum('docs_half', 'embedding') AS before_half \gset
SELECT records_changed FROM nudge_fit('docs_half', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT checksum('docs_half', 'embedding') <> :'before_half' AS changed;
SELECT ndcg > :ndcg_before + 0.2 AS improved FROM nudge_evaluate('docs_half', 'embedding', 'q', 'qrels');
SELECT embedding_type FROM nudge.fits WHERE corpus = 'docs_half'::regclass ORDER BY fit_id DESC LIMIT 1;
SELECT nudge_revert(fit_id) AS restored FROM nudge.fits WHERE corpus = 'docs_half'::regclass AND status = 'applied';
SELECT checksum('docs_half', 'embedding') = :'before_half' AS restored_exactly;

-- halfvec queries, and a halfvec target column for a vector corpus is refused
CREATE TABLE q_half AS SELECT id, embedding::halfvec(8) AS embedding FROM q;
SELECT records_changed FROM nudge_fit('docs_half', 'embedding', 'q_half', 'qrels', gamma => 0.2, dry_run => true);
CREATE TABLE hv_docs AS SELECT id, embedding::vector(8) AS embedding, NULL::halfvec(8) AS t_half FROM docs_arr;
SELECT try($$SELECT * FROM nudge_fit('hv_docs', 'embedding', 'q', 'qrels', gamma => 0.1, target => 't_half')$$);

-- a guarded refit scores the candidate as the column will hold it (rounded to halfvec): the
-- guard's "after" is nudge_evaluate of the column after the write
CREATE TABLE qrels_h40 AS SELECT * FROM qrels WHERE query_id <= 40;
CREATE TABLE gq_half AS SELECT id + 1000 AS id, embedding FROM q WHERE id > 40;
CREATE TABLE gqrels_half AS SELECT query_id + 1000 AS query_id, doc_id, score FROM qrels WHERE query_id > 40;
SELECT fit_id AS half_fit FROM nudge_fit('docs_half', 'embedding', 'q', 'qrels_h40', gamma => 0.2, dry_run => true) \gset
SET client_min_messages = warning;
SELECT fit_id AS guarded, status FROM nudge_refit(:half_fit, dry_run => false, guard_queries => 'gq_half', guard_qrels => 'gqrels_half', guard_tolerance => 1) \gset
RESET client_min_messages;
SELECT :'status' AS status;
SELECT f.guard_after = e.ndcg AS after_is_evaluate, f.guard_after <> f.guard_before AS moved
  FROM nudge.fits f, nudge_evaluate('docs_half', 'embedding', 'gq_half', 'gqrels_half') e
 WHERE f.fit_id = :guarded;
SELECT nudge_revert(:guarded) > 0 AS reverted;
SELECT checksum('docs_half', 'embedding') = :'before_half' AS restored_exactly;

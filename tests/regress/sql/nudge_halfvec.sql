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

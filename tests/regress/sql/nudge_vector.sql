-- requires: pgvector >= 0.1.8
-- pgvector's vector type: the fits of nudge_fit on vector columns give exactly the
-- results they give on real[] (same float4 values), with vector queries or array queries.
-- Runs where pgvector is available (tested with 0.6.2 and 0.8.6).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;
SET nudge.progress = off;
SET extra_float_digits = 0;

CREATE TABLE docs_vec AS SELECT id, embedding::vector(8) AS embedding FROM docs_arr;
ALTER TABLE docs_vec ADD PRIMARY KEY (id);
CREATE TABLE q_vec AS SELECT id, embedding::vector(8) AS embedding FROM q;

-- evaluation: identical to real[] for every distance, with vector or real[] queries
SELECT d AS distance, round(v.ndcg::numeric, 4) AS ndcg, v.ndcg = a.ndcg AND v.mrr = a.mrr AS same_as_real_array,
       v.ndcg = vq.ndcg AND v.mrr = vq.mrr AS same_with_vector_queries
  FROM unnest(ARRAY['cosine', 'inner_product', 'l2']) d,
       LATERAL nudge_evaluate('docs_vec', 'embedding', 'q', 'qrels', k => 5, distance => d) v,
       LATERAL nudge_evaluate('docs_arr', 'embedding', 'q', 'qrels', k => 5, distance => d) a,
       LATERAL nudge_evaluate('docs_vec', 'embedding', 'q_vec', 'qrels', k => 5, distance => d) vq;
SELECT round(ndcg::numeric, 4) AS ndcg FROM nudge_evaluate('docs_arr', 'embedding', 'q_vec', 'qrels');

SELECT ndcg AS ndcg_before FROM nudge_evaluate('docs_vec', 'embedding', 'q', 'qrels') \gset

-- dry run: reports, records, writes nothing
SELECT checksum('docs_vec', 'embedding') AS before_vec \gset
SELECT method, round(gamma::numeric, 3) AS gamma, records_changed,
       validation_after >= validation_before AS not_worse
  FROM nudge_fit('docs_vec', 'embedding', 'q_vec', 'qrels', gamma => 0.2, dry_run => true);
SELECT checksum('docs_vec', 'embedding') = :'before_vec' AS unchanged;

-- in place: the same nudged values as the same fit on real[]
CREATE TABLE docs_arr2 AS SELECT * FROM docs_arr;
SELECT records_changed FROM nudge_fit('docs_vec', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT records_changed FROM nudge_fit('docs_arr2', 'embedding', 'q', 'qrels', gamma => 0.2);
SELECT count(*) AS rows, count(*) FILTER (WHERE v.embedding::real[] = a.embedding) AS same_values
  FROM docs_vec v JOIN docs_arr2 a USING (id);
SELECT checksum('docs_vec', 'embedding') <> :'before_vec' AS changed;
-- NUDGE-N output is unit length
SELECT count(*) AS moved_rows, bool_and(abs(vector_norm(embedding) - 1) < 1e-5) AS unit
  FROM docs_vec WHERE id IN (SELECT row_id::int FROM nudge.fit_backups b JOIN nudge.fits f USING (fit_id)
                              WHERE f.corpus = 'docs_vec'::regclass);
SELECT ndcg > :ndcg_before + 0.2 AS improved FROM nudge_evaluate('docs_vec', 'embedding', 'q', 'qrels');
SELECT embedding_type FROM nudge.fits WHERE corpus = 'docs_vec'::regclass ORDER BY fit_id DESC LIMIT 1;

-- revert restores every byte
SELECT nudge_revert(fit_id) AS restored FROM nudge.fits WHERE corpus = 'docs_vec'::regclass AND status = 'applied';
SELECT checksum('docs_vec', 'embedding') = :'before_vec' AS restored_exactly;
SELECT status FROM nudge.fits WHERE corpus = 'docs_vec'::regclass ORDER BY fit_id;

-- target column: filled for every row, source untouched
ALTER TABLE docs_vec ADD COLUMN nudged vector(8), ADD COLUMN nudged_arr real[];
SELECT records_changed FROM nudge_fit('docs_vec', 'embedding', 'q', 'qrels', gamma => 0.2, target => 'nudged');
SELECT checksum('docs_vec', 'embedding') = :'before_vec' AS source_untouched;
SELECT count(*) AS rows, count(nudged) AS filled, count(*) FILTER (WHERE nudged <> embedding) AS differ FROM docs_vec;
-- a target column must have the embedding column's type
SELECT try($$SELECT * FROM nudge_fit('docs_vec', 'embedding', 'q', 'qrels', gamma => 0.1, target => 'nudged_arr')$$);

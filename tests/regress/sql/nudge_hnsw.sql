-- requires: pgvector >= 0.5.0
-- A pgvector HNSW index (pgvector 0.5.0 or later) keeps working on nudged vectors and
-- returns the nudged neighbours.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS vector;
RESET client_min_messages;
SET nudge.progress = off;
CREATE TABLE h_docs AS SELECT id, embedding::vector(8) AS embedding FROM docs_arr;
ALTER TABLE h_docs ADD PRIMARY KEY (id);
CREATE INDEX h_docs_hnsw ON h_docs USING hnsw (embedding vector_cosine_ops);
SET hnsw.ef_search = 400;

CREATE FUNCTION top10(qid int, use_index boolean) RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE r int[];
BEGIN
  EXECUTE format('SET LOCAL enable_seqscan = %s', NOT use_index);
  EXECUTE format('SET LOCAL enable_indexscan = %s', use_index);
  SELECT array_agg(id) INTO r FROM (
    SELECT id FROM h_docs ORDER BY embedding <=> (SELECT embedding::vector(8) FROM q WHERE id = qid) LIMIT 10) s;
  RETURN r;
END $$;

SELECT embedding::vector(8) AS q5 FROM q WHERE id = 5 \gset
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM h_docs ORDER BY embedding <=> :'q5' LIMIT 10;
RESET enable_seqscan;

-- query 5 is labelled with document 36
SELECT coalesce(array_position(top10(5, true), 36), 0) AS rank_before;
SELECT records_changed > 0 AS changed FROM nudge_fit('h_docs', 'embedding', 'q', 'qrels', gamma => 0.5);
SELECT array_position(top10(5, true), 36) AS rank_after;
-- the index answers exactly what an exact scan answers, for every query
SELECT count(*) AS queries, count(*) FILTER (WHERE top10(id, true) = top10(id, false)) AS same_as_exact FROM q;

-- Partitioned fits (partition => 'tenant'): one table holding several tenants, every query
-- ranking only its own tenant's rows, as an application filtering every search by tenant does.
-- At a fixed gamma a partitioned fit gives every tenant the vectors of a fit of a table holding
-- only that tenant; its validation is the mean over all labelled queries of their
-- tenant-filtered metric; nudge_evaluate with partition => likewise. Labels crossing tenants
-- and queries without a tenant are errors, and nothing is written. Needs no pgvector.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS nudge;
RESET client_min_messages;
SET nudge.progress = off;
SET extra_float_digits = 0;
\set SHOW_CONTEXT never
CREATE SCHEMA part;
SET search_path = part, public;

-- three tenants of 150 documents each in 8 dimensions (ids unique across tenants), alike in
-- distribution so that other tenants' rows would rank; 30 queries per tenant, each relevant
-- to a document of its own tenant (and every fifth to a second one)
CREATE TABLE docs AS
SELECT i AS id, 'tenant ' || (i % 3) AS tenant,
       ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 8) j) AS embedding,
       NULL::real[] AS nudged
  FROM generate_series(1, 450) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id, 'tenant ' || (k % 3) AS tenant,
       ARRAY(SELECT sin(((k * 7) % 150 * 3 + k % 3) * j * 0.37 + j + 0.4 * cos(k * j))::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 90) k;
CREATE TABLE qrels AS
SELECT k AS query_id, (k * 7) % 150 * 3 + k % 3 AS doc_id, 1 AS score FROM generate_series(1, 90) k
 WHERE (k * 7) % 150 * 3 + k % 3 BETWEEN 1 AND 450
UNION ALL SELECT k, ((k * 11) % 150) * 3 + k % 3, 2 FROM generate_series(5, 90, 5) k
 WHERE ((k * 11) % 150) * 3 + k % 3 BETWEEN 1 AND 450;
SELECT count(*) AS labels, count(*) FILTER (WHERE d.tenant = q.tenant) AS same_tenant
  FROM qrels r JOIN docs d ON d.id = r.doc_id JOIN q ON q.id = r.query_id;
-- a held-out split by query id: training queries tq, validation queries vq
CREATE TABLE vq AS SELECT * FROM q WHERE id % 4 = 0;
CREATE TABLE vqrels AS SELECT r.* FROM qrels r WHERE r.query_id % 4 = 0;
CREATE TABLE tq AS SELECT * FROM q WHERE id % 4 <> 0;
CREATE TABLE tqrels AS SELECT r.* FROM qrels r WHERE r.query_id % 4 <> 0;
-- every tenant alone: docs_N, q_N, qrels_N and the same split tq_N, vq_N
CREATE FUNCTION tenant_tables(t text, n text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  x text;
BEGIN
  EXECUTE format('CREATE TABLE part.%I AS SELECT id, embedding, NULL::real[] AS nudged FROM part.docs WHERE tenant = %L', 'docs_' || n, t);
  EXECUTE format('ALTER TABLE part.%I ADD PRIMARY KEY (id)', 'docs_' || n);
  FOREACH x IN ARRAY ARRAY['q', 'tq', 'vq'] LOOP
    EXECUTE format('CREATE TABLE part.%I AS SELECT id, embedding FROM part.%I WHERE tenant = %L', x || '_' || n, x, t);
    EXECUTE format('CREATE TABLE part.%I AS SELECT r.* FROM part.%I r JOIN part.q ON q.id = r.query_id WHERE q.tenant = %L',
                   replace(x, 'q', 'qrels') || '_' || n, replace(x, 'q', 'qrels'), t);
  END LOOP;
END $$;
SELECT tenant_tables('tenant 0', '0'), tenant_tables('tenant 1', '1'), tenant_tables('tenant 2', '2');

-- a fixed gamma: every tenant's rows get the vectors of its own fit
SELECT records_changed, round(gamma::numeric, 6) AS gamma
  FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', validation_queries => 'vq', validation_qrels => 'vqrels',
                 gamma => 0.3, target => 'nudged', partition => 'tenant');
SELECT sum(records_changed) AS changed_separately
  FROM (SELECT records_changed FROM nudge_fit('docs_0', 'embedding', 'tq_0', 'tqrels_0', validation_queries => 'vq_0',
                                             validation_qrels => 'vqrels_0', gamma => 0.3, target => 'nudged')
        UNION ALL SELECT records_changed FROM nudge_fit('docs_1', 'embedding', 'tq_1', 'tqrels_1', validation_queries => 'vq_1',
                                                        validation_qrels => 'vqrels_1', gamma => 0.3, target => 'nudged')
        UNION ALL SELECT records_changed FROM nudge_fit('docs_2', 'embedding', 'tq_2', 'tqrels_2', validation_queries => 'vq_2',
                                                        validation_qrels => 'vqrels_2', gamma => 0.3, target => 'nudged')) s;
SELECT count(*) AS rows, count(*) FILTER (WHERE d.nudged IS NOT DISTINCT FROM s.nudged) AS same_vectors,
       count(*) FILTER (WHERE d.nudged IS NOT NULL) AS written
  FROM docs d JOIN (SELECT * FROM docs_0 UNION ALL SELECT * FROM docs_1 UNION ALL SELECT * FROM docs_2) s USING (id);

-- the default search (k folds): gamma chosen jointly on all tenants' queries; the reported
-- values and nudge.fits
SELECT round(gamma::numeric, 6) AS gamma, records_changed, round(validation_before::numeric, 9) AS before,
       round(validation_after::numeric, 9) AS after
  FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true, partition => 'tenant');
SELECT partition, folds, status FROM nudge.fits WHERE corpus = 'docs'::regclass ORDER BY created_at DESC, fit_id DESC LIMIT 1;
-- unpartitioned, the same table ranks other tenants' rows: other numbers
SELECT round(validation_before::numeric, 9) AS before_unpartitioned
  FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true);

-- the held-out split (validation tables) and a seeded fraction
SELECT round(gamma::numeric, 6) AS gamma, records_changed, round(validation_before::numeric, 9) AS before,
       round(validation_after::numeric, 9) AS after
  FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', validation_queries => 'vq', validation_qrels => 'vqrels',
                 dry_run => true, partition => 'tenant') \gset held_
SELECT :'held_gamma' AS gamma, :held_records_changed AS records_changed, :'held_before' AS before, :'held_after' AS after;
-- its validation before the update is nudge_evaluate's partitioned NDCG@10 of those queries
SELECT round(ndcg::numeric, 9) AS evaluated_before, queries
  FROM nudge_evaluate('docs', 'embedding', 'vq', 'vqrels', partition => 'tenant');
SELECT round(gamma::numeric, 6) AS gamma, round(validation_after::numeric, 9) AS after
  FROM nudge_fit('docs', 'embedding', 'q', 'qrels', validation_fraction => 0.3, update_from => 'all',
                 dry_run => true, partition => 'tenant');

-- nudge_evaluate: the query-weighted mean of the tenants evaluated alone
SELECT round(e.ndcg::numeric, 9) = round(s.ndcg::numeric, 9) AS same_ndcg, e.queries
  FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', partition => 'tenant') e,
       (SELECT sum(ndcg * queries) / sum(queries) AS ndcg
          FROM (SELECT * FROM nudge_evaluate('docs_0', 'embedding', 'q_0', 'qrels_0')
                UNION ALL SELECT * FROM nudge_evaluate('docs_1', 'embedding', 'q_1', 'qrels_1')
                UNION ALL SELECT * FROM nudge_evaluate('docs_2', 'embedding', 'q_2', 'qrels_2')) x) s;
-- NULL partition: unpartitioned; NULL elsewhere: no row, as before
SELECT round(ndcg::numeric, 9) AS unpartitioned FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', partition => NULL);
SELECT count(*) AS no_row FROM nudge_evaluate('docs', NULL, 'q', 'qrels', partition => 'tenant');

-- nudge_refit repeats the partition
SELECT fit_id AS applied FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, partition => 'tenant') \gset
SELECT records_changed FROM nudge_refit(:applied, dry_run => true);
SELECT partition, status FROM nudge.fits WHERE refit_of = :applied;
SELECT nudge_revert(:applied) > 0 AS reverted;

-- one gamma per tenant: with k folds every tenant has 30 labelled queries, so each takes the
-- best gamma of its own out-of-fold curve (the joint gamma stays the result's); the validation
-- after is the mean over all queries at their tenant's gamma, at least the joint fit's
SELECT round(gamma::numeric, 6) AS joint_gamma, records_changed, round(validation_before::numeric, 9) AS before,
       round(validation_after::numeric, 9) AS after
  FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true, partition => 'tenant', gamma_per_partition => true);
SELECT p.key AS tenant, round((p.value->>'gamma')::numeric, 6) AS gamma, p.value->'queries' AS queries, p.value->'own' AS own
  FROM nudge.fits f, jsonb_each(f.partition_gammas) p
 WHERE f.fit_id = (SELECT max(fit_id) FROM nudge.fits WHERE partition_gammas IS NOT NULL) ORDER BY 1;
-- on the held-out split every tenant has fewer than 10 validation queries: the joint fit
SELECT round(gamma::numeric, 6) = :'held_gamma' AS joint_gamma, round(validation_after::numeric, 9) = :'held_after' AS joint_after
  FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', validation_queries => 'vq', validation_qrels => 'vqrels',
                 dry_run => true, partition => 'tenant', gamma_per_partition => true);
-- written and refitted: each tenant's rows moved at its gamma; the refit repeats it
SELECT fit_id AS per_tenant FROM nudge_fit('docs', 'embedding', 'q', 'qrels', target => 'nudged', partition => 'tenant',
                                           gamma_per_partition => true) \gset
SELECT fit_id AS refit FROM nudge_refit(:per_tenant, dry_run => true) \gset
SELECT f.partition_gammas = r.partition_gammas AS same_gammas, r.partition
  FROM nudge.fits f, nudge.fits r WHERE f.fit_id = :per_tenant AND r.fit_id = :refit;
SELECT count(*) AS rows, count(*) FILTER (WHERE nudged IS DISTINCT FROM embedding) AS moved FROM docs;

-- bad input: a specific SQLSTATE, nothing written
CREATE FUNCTION fails(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT md5(string_agg(id || ':' || embedding::text || ':' || coalesce(nudged::text, '-'), ',' ORDER BY id)) AS before FROM docs \gset
SELECT count(*) AS fits_before FROM nudge.fits \gset
-- a label whose doc is another tenant's (a fixed gamma, the default search, an evaluation)
CREATE TABLE cross_qrels AS SELECT * FROM qrels UNION ALL SELECT 3, 2, 1;
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'cross_qrels', gamma => 0.2, partition => 'tenant')$$);
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'cross_qrels', partition => 'tenant')$$);
SELECT fails($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'cross_qrels', partition => 'tenant')$$);
-- ... in the validation labels of a held-out split
CREATE TABLE cross_vqrels AS SELECT * FROM vqrels UNION ALL SELECT 4, 3, 0;
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', validation_queries => 'vq',
               validation_qrels => 'cross_vqrels', gamma => 0.2, partition => 'tenant')$$);
-- a labelled doc without a tenant
UPDATE docs SET tenant = NULL WHERE id = 22;
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, partition => 'tenant')$$);
UPDATE docs SET tenant = 'tenant 1' WHERE id = 22;
-- gamma_per_partition without partition, or with a fixed gamma
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', dry_run => true, gamma_per_partition => true)$$);
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, partition => 'tenant', gamma_per_partition => true)$$);
-- a query without a tenant
UPDATE q SET tenant = NULL WHERE id = 4;
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, partition => 'tenant')$$);
SELECT fails($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', partition => 'tenant')$$);
UPDATE q SET tenant = 'tenant 1' WHERE id = 4;
-- no such column in the queries, or in the corpus
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q_0', 'qrels_0', gamma => 0.2, partition => 'tenant')$$);
ALTER TABLE q ADD COLUMN region text;
UPDATE q SET region = tenant;
SELECT fails($$SELECT * FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2, partition => 'region')$$);
SELECT fails($$SELECT * FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels', partition => 'region')$$);
SELECT md5(string_agg(id || ':' || embedding::text || ':' || coalesce(nudged::text, '-'), ',' ORDER BY id)) = :'before' AS nothing_written,
       (SELECT count(*) FROM nudge.fits) = :fits_before AS nothing_recorded
  FROM docs;
-- a tenant of rows without queries is never ranked: the same fit
INSERT INTO docs SELECT 1000 + id, 'tenant 9', embedding, NULL FROM docs WHERE id <= 100;
SELECT round(gamma::numeric, 6) = :'held_gamma' AS same_gamma,
       round(validation_before::numeric, 9) = :'held_before' AS same_before,
       round(validation_after::numeric, 9) = :'held_after' AS same_after
  FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', validation_queries => 'vq', validation_qrels => 'vqrels',
                 dry_run => true, partition => 'tenant');
-- a guarded refit of a partitioned fit: the guard queries carry the tenant too, and rank only
-- their tenant's rows (its numbers are nudge_evaluate(partition => 'tenant') before and after)
CREATE TABLE gq AS SELECT id + 1000 AS id, tenant, embedding FROM vq;
CREATE TABLE gqrels AS SELECT query_id + 1000 AS query_id, doc_id, score FROM vqrels;
SELECT fit_id AS pfit FROM nudge_fit('docs', 'embedding', 'tq', 'tqrels', gamma => 0.3, partition => 'tenant') \gset
SELECT ndcg AS g_now FROM nudge_evaluate('docs', 'embedding', 'gq', 'gqrels', partition => 'tenant') \gset
SET client_min_messages = warning;
SELECT fit_id AS prefit, status, abs(guard_before - :g_now) < 1e-12 AS before_is_evaluate, guard_after AS g_after
  FROM nudge_refit(:pfit, guard_queries => 'gq', guard_qrels => 'gqrels', guard_tolerance => 1) \gset
RESET client_min_messages;
SELECT :'status' AS status, :'before_is_evaluate' AS before_is_evaluate, p.partition,
       abs(e.ndcg - :g_after) < 1e-12 AS after_is_evaluate
  FROM nudge_evaluate('docs', 'embedding', 'gq', 'gqrels', partition => 'tenant') e, nudge.fits p WHERE p.fit_id = :prefit;
SELECT nudge_revert(:prefit) > 0 AS reverted, nudge_revert(:pfit) > 0 AS reverted_first;
-- guard queries without the tenant column
CREATE TABLE gq_flat AS SELECT id, embedding FROM gq;
SELECT fails($$SELECT * FROM nudge_refit($$ || :pfit || $$, dry_run => true, guard_queries => 'gq_flat', guard_qrels => 'gqrels')$$);
SET client_min_messages = warning;
DROP SCHEMA part CASCADE;
RESET client_min_messages;

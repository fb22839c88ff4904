-- nudge catalog: one row per fit, the original vectors of every row a fit overwrote, and the
-- rows a staged fit has yet to write.
--
-- Only nudge writes these tables: its functions run with the caller's rights on the caller's
-- tables, and record fits, backups and staged rows here as the extension's owner (src/catalog.rs).
-- User roles may read them; row-level security hides vectors of a table from roles that may not
-- SELECT every row of it. Every name below is schema-qualified and every operator is
-- pg_catalog's, whatever the search_path at CREATE EXTENSION time holds.
-- The tables are dumped by pg_dump (pg_extension_config_dump), so fits survive dump/restore
-- and can still be reverted.

CREATE SCHEMA nudge;
GRANT USAGE ON SCHEMA nudge TO PUBLIC;

CREATE TABLE nudge.fits (
    fit_id              bigserial PRIMARY KEY,
    corpus              regclass    NOT NULL,
    id_column           text        NOT NULL,
    embedding           text        NOT NULL,
    embedding_type      text        NOT NULL,
    target              text,
    queries             regclass    NOT NULL,
    qrels               regclass    NOT NULL,
    validation_queries  regclass,
    validation_qrels    regclass,
    validation_fraction float8,
    seed                int,
    method              text        NOT NULL,
    metric              text,
    gamma_search        text        NOT NULL,
    negative_rule       text        NOT NULL,
    gamma               float8      NOT NULL,
    train_queries       int         NOT NULL,
    validation_query_count int      NOT NULL,
    records_moving      bigint      NOT NULL,
    records_changed     bigint      NOT NULL,
    rows_written        bigint      NOT NULL,
    rows_skipped        bigint      NOT NULL DEFAULT 0,  -- rows to write the application changed first
    lock                text        CHECK (lock OPERATOR(pg_catalog.=) ANY ('{rows,table}'::pg_catalog.text[])),  -- NULL for a dry run
    validation_before   float8,
    validation_after    float8,
    curve               jsonb,
    seconds             float8      NOT NULL,
    status              text        NOT NULL
                        CHECK (status OPERATOR(pg_catalog.=) ANY ('{applied,dry_run,reverted,staged,rejected}'::pg_catalog.text[])),
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by          name        NOT NULL DEFAULT current_user,
    reverted_at         timestamptz,
    refit_of            bigint,
    folds               int,
    update_from         text        CHECK (update_from OPERATOR(pg_catalog.=) ANY ('{train,all}'::pg_catalog.text[])),
    guard_queries       regclass,
    guard_qrels         regclass,
    guard_metric        text,
    guard_tolerance     float8,
    guard_before        float8,
    guard_after         float8,
    partition           text,       -- partition => (every query ranked only its partition's rows)
    partition_gammas    jsonb       -- gamma_per_partition => true: each partition's gamma
);
COMMENT ON TABLE nudge.fits IS 'One row per nudge_fit call: what it read, its parameters, the chosen gamma, metrics and status';
COMMENT ON COLUMN nudge.fits.validation_after IS 'The metric at the chosen gamma: on the held-out validation queries, or, when folds is set, the mean out-of-fold value (a cross-validated estimate, not a held-out one)';
COMMENT ON COLUMN nudge.fits.folds IS 'Fold count when gamma was chosen by k-fold cross-validation (the default without validation tables or validation_fraction)';
COMMENT ON COLUMN nudge.fits.status IS 'applied (written), dry_run (nothing written), staged (computed, its rows written by CALL nudge_apply in short transactions; rows_written and rows_skipped count the batches committed so far), reverted, or rejected (a guarded refit that scored worse than the vectors it would replace: nothing written)';
COMMENT ON COLUMN nudge.fits.guard_before IS 'A guarded refit: guard_metric of the vectors searched before it, on guard_queries / guard_qrels (queries no fit trains on)';
COMMENT ON COLUMN nudge.fits.guard_after IS 'A guarded refit: guard_metric of the refit''s vectors on the guard queries; written only if guard_after >= guard_before - guard_tolerance';
COMMENT ON COLUMN nudge.fits.update_from IS 'Whose labels moved the records: train (the held-out queries only chose gamma) or all';
COMMENT ON COLUMN nudge.fits.partition IS 'partition => of the fit: every query ranked only the corpus rows with its value of this column (NULL: unpartitioned)';
COMMENT ON COLUMN nudge.fits.partition_gammas IS 'gamma_per_partition => true: {"value": {"gamma": g, "queries": n, "own": true|false}} per partition with evaluated queries (own false: too few of them, the joint gamma); NULL otherwise';

CREATE TABLE nudge.fit_backups (
    fit_id          bigint   NOT NULL REFERENCES nudge.fits ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    corpus          regclass NOT NULL,
    row_id          text     NOT NULL,
    original        real[],
    original_double double precision[],
    written         bigint   NOT NULL,
    PRIMARY KEY (fit_id, row_id),
    CHECK ((original IS NULL) OPERATOR(pg_catalog.<>) (original_double IS NULL))
) WITH (toast_tuple_target = 8160);
COMMENT ON TABLE nudge.fit_backups IS 'Vectors as they were before an in-place fit wrote them (original: real[], exact for vector, halfvec and real[] columns; original_double for double precision[] columns) and nudge_digest() of the value the fit wrote (written); nudge_revert restores the originals of rows still holding what the fit wrote';
-- One fit writes a backup row per changed row, inside the fit's transaction, so their cost is
-- most of a small fit's. Keep them in the heap page: toast_tuple_target lets rows up to a page
-- (2,000 real dimensions) stay inline instead of going to the TOAST table, and STORAGE
-- EXTERNAL keeps pglz off larger ones (compressing float data saves little and cost ~0.13 ms
-- per 384-dim array; bench/).
ALTER TABLE nudge.fit_backups ALTER COLUMN original SET STORAGE EXTERNAL,
                              ALTER COLUMN original_double SET STORAGE EXTERNAL;

-- A staged fit (nudge_fit(staged => true)): the rows it will write, with the vector to write
-- and where and what the row was when the fit read it; nudge_apply writes them batch by batch,
-- each batch in its own transaction, and deletes them here as it goes.
CREATE TABLE nudge.fit_staged (
    fit_id     bigint   NOT NULL REFERENCES nudge.fits ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    corpus     regclass NOT NULL,
    row_id     text     NOT NULL,
    row_tableoid oid,            -- the row version read: plain tables
    row_ctid   tid,
    dist       text,             -- the distribution column's value as text: Citus tables by another column
    read       bigint   NOT NULL,  -- nudge_digest of the embedding as the fit read it
    vector     real[]   NOT NULL,
    PRIMARY KEY (fit_id, row_id)
) WITH (toast_tuple_target = 8160);
ALTER TABLE nudge.fit_staged ALTER COLUMN vector SET STORAGE EXTERNAL;
COMMENT ON TABLE nudge.fit_staged IS 'Rows a staged fit has yet to write: the nudged vector, and the row version and nudge_digest of the value the fit read (the compare-and-set of nudge_apply)';

-- Readable by every role; written only by nudge (as the owner of these tables).
GRANT SELECT ON nudge.fits, nudge.fit_backups, nudge.fit_staged TO PUBLIC;

-- Whether the current role may read vectors of `corpus` kept in the catalog (backups, staged
-- rows): it may SELECT the table, and the table has no row-level security of its own that
-- applies to the role (those vectors include rows the policy hides).
CREATE FUNCTION nudge.nudge_may_read_vectors(corpus pg_catalog.regclass) RETURNS pg_catalog.bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.has_table_privilege(corpus::pg_catalog.oid, 'SELECT')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
                        WHERE c.oid OPERATOR(pg_catalog.=) corpus::pg_catalog.oid AND c.relrowsecurity
                          AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')))
$$;

-- Row-level security for the roles that read the catalog (its owner, nudge, bypasses it).
ALTER TABLE nudge.fits ENABLE ROW LEVEL SECURITY;
CREATE POLICY fits_read ON nudge.fits FOR SELECT USING (true);
ALTER TABLE nudge.fit_backups ENABLE ROW LEVEL SECURITY;
CREATE POLICY fit_backups_read ON nudge.fit_backups FOR SELECT USING (nudge.nudge_may_read_vectors(corpus));
ALTER TABLE nudge.fit_staged ENABLE ROW LEVEL SECURITY;
CREATE POLICY fit_staged_read ON nudge.fit_staged FOR SELECT USING (nudge.nudge_may_read_vectors(corpus));

SELECT pg_catalog.pg_extension_config_dump('nudge.fits', '');
SELECT pg_catalog.pg_extension_config_dump('nudge.fits_fit_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('nudge.fit_backups', '');
SELECT pg_catalog.pg_extension_config_dump('nudge.fit_staged', '');

-- nudge 0.1.0 -> 0.2.0 (ALTER EXTENSION nudge UPDATE TO '0.2.0'). Fits, backups and staged
-- rows are kept as they are; what changes is who may write them and how nudge's SQL resolves
-- names (issue 17: safe to install in a shared database).
--
--  * The catalog is written only by nudge itself (as the extension's owner): user roles keep
--    SELECT (row-level security still hides vectors of tables they cannot read), and lose
--    INSERT / UPDATE / DELETE and the fit-id sequence; the write policies go.
--  * Every function that runs SQL pins search_path = pg_catalog, pg_temp; the catalog's
--    defaults, checks and read policies bind only to pg_catalog's operators.
--  * nudge_revert is implemented in the library (its checks on staged fits and the catalog
--    writes need nudge's own identity); nudge_apply names its step through the extension
--    schema; the shard functions are not executable by PUBLIC.
--  * Guarded refits: nudge_refit takes guard_queries / guard_qrels / guard_metric /
--    guard_tolerance and returns status, guard_before, guard_after; nudge.fits records the
--    guard and the new status 'rejected'.
-- Embedding types recorded by 0.1.0 as printed under the caller's search_path (`vector(384)`)
-- are still recognised (`public.vector(384)` is how 0.2.0 records them).

\echo Use "ALTER EXTENSION nudge UPDATE TO '0.2.0'" to load this file. \quit

-- == the catalog: read by everyone, written by nudge
DROP POLICY fit_backups_write ON nudge.fit_backups;
DROP POLICY fit_staged_write ON nudge.fit_staged;
DROP POLICY fit_staged_delete ON nudge.fit_staged;
DROP POLICY fits_insert ON nudge.fits;
DROP POLICY fits_revert ON nudge.fits;
REVOKE ALL ON nudge.fits, nudge.fit_backups, nudge.fit_staged FROM PUBLIC;
REVOKE ALL ON SEQUENCE nudge.fits_fit_id_seq FROM PUBLIC;
GRANT SELECT ON nudge.fits, nudge.fit_backups, nudge.fit_staged TO PUBLIC;

CREATE OR REPLACE FUNCTION nudge.nudge_may_read_vectors(corpus pg_catalog.regclass) RETURNS pg_catalog.bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.has_table_privilege(corpus::pg_catalog.oid, 'SELECT')
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c
                        WHERE c.oid OPERATOR(pg_catalog.=) corpus::pg_catalog.oid AND c.relrowsecurity
                          AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')))
$$;

-- defaults and checks, as 0.2.0 creates them (bound to pg_catalog whatever the search_path)
ALTER TABLE nudge.fits ALTER COLUMN created_at SET DEFAULT pg_catalog.now();
ALTER TABLE nudge.fits DROP CONSTRAINT fits_status_check,
    ADD CONSTRAINT fits_status_check
        CHECK (status OPERATOR(pg_catalog.=) ANY ('{applied,dry_run,reverted,staged,rejected}'::pg_catalog.text[]));
ALTER TABLE nudge.fits ADD COLUMN guard_queries regclass, ADD COLUMN guard_qrels regclass,
    ADD COLUMN guard_metric text, ADD COLUMN guard_tolerance float8,
    ADD COLUMN guard_before float8, ADD COLUMN guard_after float8;
COMMENT ON COLUMN nudge.fits.status IS 'applied (written), dry_run (nothing written), staged (computed, its rows written by CALL nudge_apply in short transactions; rows_written and rows_skipped count the batches committed so far), reverted, or rejected (a guarded refit that scored worse than the vectors it would replace: nothing written)';
COMMENT ON COLUMN nudge.fits.guard_before IS 'A guarded refit: guard_metric of the vectors searched before it, on guard_queries / guard_qrels (queries no fit trains on)';
COMMENT ON COLUMN nudge.fits.guard_after IS 'A guarded refit: guard_metric of the refit''s vectors on the guard queries; written only if guard_after >= guard_before - guard_tolerance';
ALTER TABLE nudge.fits DROP CONSTRAINT fits_lock_check,
    ADD CONSTRAINT fits_lock_check CHECK (lock OPERATOR(pg_catalog.=) ANY ('{rows,table}'::pg_catalog.text[]));
ALTER TABLE nudge.fits DROP CONSTRAINT fits_update_from_check,
    ADD CONSTRAINT fits_update_from_check CHECK (update_from OPERATOR(pg_catalog.=) ANY ('{train,all}'::pg_catalog.text[]));
ALTER TABLE nudge.fit_backups DROP CONSTRAINT fit_backups_check,
    ADD CONSTRAINT fit_backups_check CHECK ((original IS NULL) OPERATOR(pg_catalog.<>) (original_double IS NULL));

-- == functions
ALTER FUNCTION @extschema@.nudge_fit SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.nudge_evaluate SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.nudge_apply_step SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.nudge_shard_pass SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION @extschema@.nudge_shard_topk SET search_path TO pg_catalog, pg_temp;
-- (NULL arguments are answered with an error of their own, 22004)
ALTER FUNCTION @extschema@.nudge_shard_topk CALLED ON NULL INPUT;
REVOKE EXECUTE ON FUNCTION @extschema@.nudge_shard_pass(pg_catalog.oid[], pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.nudge_shard_topk(pg_catalog.oid[], pg_catalog.text, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;

-- nudge_refit gains the guard (new arguments and result columns: a new function)
DROP FUNCTION @extschema@.nudge_refit(pg_catalog.int8, pg_catalog.bool, pg_catalog.text, pg_catalog.bool);
CREATE FUNCTION @extschema@."nudge_refit"(
	"fit_id" bigint,
	"dry_run" bool DEFAULT false,
	"lock" TEXT DEFAULT 'rows',
	"staged" bool DEFAULT false,
	"guard_queries" regclass DEFAULT NULL,
	"guard_qrels" regclass DEFAULT NULL,
	"guard_metric" TEXT DEFAULT 'ndcg@10',
	"guard_tolerance" double precision DEFAULT 0.0
) RETURNS TABLE (
	"fit_id" bigint,
	"method" TEXT,
	"gamma" double precision,
	"records_changed" bigint,
	"validation_before" double precision,
	"validation_after" double precision,
	"seconds" double precision,
	"rows_skipped" bigint,
	"status" TEXT,
	"guard_before" double precision,
	"guard_after" double precision
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_refit_guarded_wrapper';

-- (CREATE OR REPLACE keeps grants users made on these)
CREATE OR REPLACE FUNCTION @extschema@."nudge_revert"(
	"fit_id" bigint,
	"lock" TEXT DEFAULT 'rows'
) RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_revert_wrapper';
-- (0.1.0's PL/pgSQL nudge_revert had a comment, which CREATE OR REPLACE keeps; 0.2.0's has none)
COMMENT ON FUNCTION @extschema@.nudge_revert(pg_catalog.int8, pg_catalog.text) IS NULL;

CREATE OR REPLACE PROCEDURE @extschema@.nudge_apply(fit_id pg_catalog.int8, batch_rows pg_catalog.int4 DEFAULT 256,
                                         INOUT rows_written pg_catalog.int8 DEFAULT NULL,
                                         INOUT rows_skipped pg_catalog.int8 DEFAULT NULL)
LANGUAGE plpgsql
AS $proc$
DECLARE
    left_staged pg_catalog.int8;
    done        pg_catalog.int8;
    t0          pg_catalog.timestamptz := pg_catalog.clock_timestamp();
    last_report pg_catalog.timestamptz := t0;
    progress    pg_catalog.bool := coalesce(pg_catalog.current_setting('nudge.progress', true)::pg_catalog.bool, true);
    every       pg_catalog.interval := pg_catalog.make_interval(
                    secs => coalesce(pg_catalog.current_setting('nudge.progress_interval', true)::pg_catalog.float8, 2));
BEGIN
    IF nudge_apply.fit_id IS NULL OR nudge_apply.batch_rows IS NULL THEN
        RAISE EXCEPTION 'fit_id and batch_rows must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    LOOP
        left_staged := @extschema@.nudge_apply_step(nudge_apply.fit_id, nudge_apply.batch_rows);
        COMMIT;
        EXIT WHEN left_staged OPERATOR(pg_catalog.=) 0::pg_catalog.int8;
        IF progress AND (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) last_report) OPERATOR(pg_catalog.>=) every THEN
            last_report := pg_catalog.clock_timestamp();
            SELECT f.rows_written OPERATOR(pg_catalog.+) f.rows_skipped INTO done
              FROM nudge.fits AS f WHERE f.fit_id OPERATOR(pg_catalog.=) nudge_apply.fit_id;
            RAISE NOTICE 'nudge_apply: writing rows: % of % (%), % s', done, done OPERATOR(pg_catalog.+) left_staged,
                         pg_catalog.concat(pg_catalog.round((100::pg_catalog.float8 OPERATOR(pg_catalog.*) done::pg_catalog.float8)
                                           OPERATOR(pg_catalog./) (done OPERATOR(pg_catalog.+) left_staged)::pg_catalog.float8), '%'),
                         pg_catalog.round(pg_catalog.date_part('epoch', last_report OPERATOR(pg_catalog.-) t0)::pg_catalog.numeric, 1);
        END IF;
    END LOOP;
    SELECT f.rows_written, f.rows_skipped INTO nudge_apply.rows_written, nudge_apply.rows_skipped
      FROM nudge.fits AS f WHERE f.fit_id OPERATOR(pg_catalog.=) nudge_apply.fit_id;
    IF nudge_apply.rows_skipped OPERATOR(pg_catalog.>) 0::pg_catalog.int8 THEN
        RAISE NOTICE 'nudge: % of % rows to write were changed or deleted by the application after fit % read them and were left as they are',
                     nudge_apply.rows_skipped, nudge_apply.rows_written OPERATOR(pg_catalog.+) nudge_apply.rows_skipped, nudge_apply.fit_id;
    END IF;
END
$proc$;
COMMENT ON PROCEDURE @extschema@.nudge_apply(pg_catalog.int8, pg_catalog.int4, pg_catalog.int8, pg_catalog.int8) IS 'Write a staged nudge_fit in batches of batch_rows rows, each committed on its own; returns the rows written and skipped';

-- == partition => (nudge_fit, nudge_evaluate): every query ranks only its partition's rows;
-- gamma_per_partition => (nudge_fit). (BEGIN partition; the CREATE FUNCTIONs are pgrx's; their
-- C symbols are the 0.2.0 signatures' own: 0.1.0's symbols answer the old catalog)
ALTER TABLE nudge.fits ADD COLUMN partition text, ADD COLUMN partition_gammas jsonb;
COMMENT ON COLUMN nudge.fits.partition IS 'partition => of the fit: every query ranked only the corpus rows with its value of this column (NULL: unpartitioned)';
COMMENT ON COLUMN nudge.fits.partition_gammas IS 'gamma_per_partition => true: {"value": {"gamma": g, "queries": n, "own": true|false}} per partition with evaluated queries (own false: too few of them, the joint gamma); NULL otherwise';
DROP FUNCTION @extschema@.nudge_fit(pg_catalog.regclass, pg_catalog.text, pg_catalog.regclass, pg_catalog.regclass, pg_catalog.text, pg_catalog.text, pg_catalog.regclass, pg_catalog.regclass, pg_catalog.float8, pg_catalog.int4, pg_catalog.text, pg_catalog.float8, pg_catalog.text, pg_catalog.bool, pg_catalog.text, pg_catalog.text, pg_catalog.int4, pg_catalog.text, pg_catalog.text, pg_catalog.bool);
CREATE FUNCTION @extschema@."nudge_fit"(
	"corpus" regclass,
	"embedding" TEXT,
	"queries" regclass,
	"qrels" regclass,
	"id_column" TEXT DEFAULT 'id',
	"method" TEXT DEFAULT 'nudge_n',
	"validation_queries" regclass DEFAULT NULL,
	"validation_qrels" regclass DEFAULT NULL,
	"validation_fraction" double precision DEFAULT NULL,
	"seed" INT DEFAULT 0,
	"metric" TEXT DEFAULT 'ndcg@10',
	"gamma" double precision DEFAULT NULL,
	"target" TEXT DEFAULT NULL,
	"dry_run" bool DEFAULT false,
	"gamma_search" TEXT DEFAULT 'best',
	"negative_rule" TEXT DEFAULT 'skip',
	"folds" INT DEFAULT NULL,
	"update_from" TEXT DEFAULT NULL,
	"lock" TEXT DEFAULT 'rows',
	"staged" bool DEFAULT false,
	"partition" TEXT DEFAULT NULL,
	"gamma_per_partition" bool DEFAULT false
) RETURNS TABLE (
	"fit_id" bigint, 
	"method" TEXT, 
	"gamma" double precision, 
	"records_changed" bigint, 
	"validation_before" double precision, 
	"validation_after" double precision, 
	"seconds" double precision, 
	"rows_skipped" bigint 
)
VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_fit_0_2_wrapper';
DROP FUNCTION @extschema@.nudge_evaluate(pg_catalog.regclass, pg_catalog.text, pg_catalog.regclass, pg_catalog.regclass, pg_catalog.int4, pg_catalog.text, pg_catalog.text);
CREATE FUNCTION @extschema@."nudge_evaluate"(
	"corpus" regclass,
	"embedding" TEXT,
	"queries" regclass,
	"qrels" regclass,
	"k" INT DEFAULT 10,
	"id_column" TEXT DEFAULT 'id',
	"distance" TEXT DEFAULT 'cosine',
	"partition" TEXT DEFAULT NULL
) RETURNS TABLE (
	"queries" bigint, 
	"ndcg" double precision, 
	"recall" double precision, 
	"capped_recall" double precision, 
	"mrr" double precision 
)
STABLE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_evaluate_0_2_wrapper';
-- (END partition)

-- Citus writes send vectors to the shards as bytes and get the overwritten values back as
-- bytes (src/write.rs, Flat): the two conversions, run on the workers as the caller.
CREATE FUNCTION @extschema@."nudge_floats"(
	"bytes" bytea
) RETURNS real[]
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_floats_wrapper';
CREATE FUNCTION @extschema@."nudge_bytes"(
	"values" real[]
) RETURNS bytea
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'nudge_bytes_wrapper';

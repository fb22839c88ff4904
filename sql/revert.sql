-- nudge_revert(fit_id): put back the vectors an in-place fit overwrote.
--
-- Fits on one column form a stack: each in-place fit backs up exactly the values it
-- overwrote, so only the newest applied fit of a column can be reverted (then the one
-- before it, and so on). Identifiers come from the catalog and are quoted by format().
-- Types print relative to the caller's search_path (as they did when the fit ran), so
-- the function does not pin one; every catalog reference is schema-qualified instead.
-- `lock` as in nudge_fit: 'rows' (the application's writes go on; a row it changed keeps its
-- value) or 'table' (they wait until the revert commits).

CREATE FUNCTION nudge_revert(fit_id bigint, lock text DEFAULT 'rows') RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT
AS $fn$
DECLARE
    f          nudge.fits%ROWTYPE;
    later      bigint;
    col_type   text;
    id_type    text;
    kind       text;
    backups    bigint;
    restored   bigint;
    one        bigint;
    restore    text;
    citus_method text;
    bk         record;
    lock_mode  text;
BEGIN
    lock_mode := CASE pg_catalog.lower(nudge_revert.lock)
                 WHEN 'rows' THEN 'SHARE UPDATE EXCLUSIVE' WHEN 'table' THEN 'SHARE ROW EXCLUSIVE' END;
    IF lock_mode IS NULL THEN
        RAISE EXCEPTION 'unknown lock "%"', nudge_revert.lock
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''rows'' (the default: the application''s INSERT, UPDATE and DELETE go on during the revert) or ''table'' (they wait until it commits).';
    END IF;
    SELECT * INTO f FROM nudge.fits AS x WHERE x.fit_id = nudge_revert.fit_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fit % does not exist', nudge_revert.fit_id
            USING ERRCODE = 'undefined_object';
    END IF;
    IF f.status = 'dry_run' THEN
        RAISE EXCEPTION 'fit % was a dry run and changed nothing', f.fit_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF f.target IS NOT NULL THEN
        RAISE EXCEPTION 'fit % wrote column "%" and left the source column untouched', f.fit_id, f.target
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The original vectors are still in "' || f.embedding || '"; drop or overwrite the target column instead.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class AS c WHERE c.oid = f.corpus) THEN
        RAISE EXCEPTION 'the table fit % wrote (OID %) no longer exists', f.fit_id, f.corpus::pg_catalog.oid
            USING ERRCODE = 'undefined_table';
    END IF;
    IF NOT pg_catalog.has_table_privilege(f.corpus, 'UPDATE') THEN
        RAISE EXCEPTION 'permission denied to revert fit %: it needs UPDATE on table %', f.fit_id, f.corpus
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    -- Lock the table, then look at the state of its fits: a nudge_fit or nudge_revert on it
    -- that committed while we waited is seen below, and none can start until we commit (both
    -- modes conflict with both).
    EXECUTE pg_catalog.format('LOCK TABLE %s IN %s MODE', f.corpus, lock_mode);
    SELECT * INTO f FROM nudge.fits AS x WHERE x.fit_id = nudge_revert.fit_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fit % does not exist', nudge_revert.fit_id
            USING ERRCODE = 'undefined_object';
    END IF;
    IF f.status = 'reverted' THEN
        RAISE EXCEPTION 'fit % is already reverted', f.fit_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    SELECT pg_catalog.max(g.fit_id) INTO later FROM nudge.fits AS g
     WHERE g.corpus = f.corpus AND g.embedding = f.embedding AND g.target IS NULL
       AND g.status IN ('applied', 'staged') AND g.fit_id > f.fit_id;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION 'fit % was followed by fit % on the same column', f.fit_id, later
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Revert fit %s first.', later);
    END IF;

    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod),
           CASE WHEN a.atttypid IN ('real[]'::pg_catalog.regtype, 'double precision[]'::pg_catalog.regtype) THEN 'array' ELSE 'vector' END
      INTO col_type, kind
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = f.corpus AND a.attname = f.embedding AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', f.embedding, f.corpus
            USING ERRCODE = 'undefined_column';
    END IF;
    IF col_type <> f.embedding_type THEN
        RAISE EXCEPTION 'column "%" of relation % changed type from % to % since fit %',
                        f.embedding, f.corpus, f.embedding_type, col_type, f.fit_id
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) INTO id_type
      FROM pg_catalog.pg_attribute AS a
     WHERE a.attrelid = f.corpus AND a.attname = f.id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF id_type IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation % does not exist', f.id_column, f.corpus
            USING ERRCODE = 'undefined_column';
    END IF;

    -- Row-level security hides backups of tables the caller cannot SELECT: refuse rather
    -- than restore part of a fit.
    SELECT pg_catalog.count(*) INTO backups FROM nudge.fit_backups AS b
     WHERE b.fit_id = f.fit_id AND b.corpus = f.corpus;
    IF backups <> f.rows_written THEN
        RAISE EXCEPTION 'permission denied to read the backups of fit %', f.fit_id
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = pg_catalog.format('%s of %s backed-up rows are visible to role %s.', backups, f.rows_written, current_user);
    END IF;

    -- Only rows still holding what the fit wrote are restored: a row the application
    -- updated (or deleted) since keeps its new value. This is a compare-and-set under either
    -- lock: a row the application is updating at the same moment is waited for, and its new
    -- version re-checked (READ COMMITTED's EvalPlanQual). One UPDATE joined to the backups; Citus
    -- runs it on every shard of a distributed table, with the backups shipped along (filtered
    -- here first, behind OFFSET 0: a regclass shipped to a worker is the coordinator's OID,
    -- which names nothing there). Citus
    -- refuses that join on its other tables (reference and Citus-managed local tables: the
    -- table is not distributed), which are restored row by row instead.
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        EXECUTE 'SELECT p.partmethod::text FROM pg_catalog.pg_dist_partition AS p WHERE p.logicalrelid = $1'
           INTO citus_method USING f.corpus;
    END IF;
    restore := pg_catalog.format(
        'UPDATE %s AS t SET %I = CAST(%s AS %s)
           FROM (SELECT x.row_id, x.original, x.original_double, x.written FROM nudge.fit_backups AS x
                  WHERE x.fit_id = $1 AND x.corpus = $2 OFFSET 0) AS b
          WHERE t.%I = CAST(b.row_id AS %s) AND public.nudge_digest(%s) = b.written',
        f.corpus, f.embedding,
        CASE col_type WHEN 'double precision[]' THEN 'b.original_double' ELSE 'b.original' END,
        col_type, f.id_column, id_type,
        CASE kind WHEN 'array' THEN pg_catalog.format('t.%I', f.embedding)
                  ELSE pg_catalog.format('CAST(t.%I AS real[])', f.embedding) END);
    IF citus_method IS NULL OR citus_method <> 'n' THEN
        EXECUTE restore USING f.fit_id, f.corpus;
        GET DIAGNOSTICS restored = ROW_COUNT;
    ELSE
        restored := 0;
        restore := pg_catalog.format(
            'UPDATE %s AS t SET %I = CAST($1 AS %s) WHERE t.%I = CAST($2 AS %s) AND public.nudge_digest(%s) = $3',
            f.corpus, f.embedding, col_type, f.id_column, id_type,
            CASE kind WHEN 'array' THEN pg_catalog.format('t.%I', f.embedding)
                      ELSE pg_catalog.format('CAST(t.%I AS real[])', f.embedding) END);
        FOR bk IN SELECT x.row_id, x.original, x.original_double, x.written FROM nudge.fit_backups AS x
                  WHERE x.fit_id = f.fit_id AND x.corpus = f.corpus LOOP
            IF col_type = 'double precision[]' THEN
                EXECUTE restore USING bk.original_double, bk.row_id, bk.written;
            ELSE
                EXECUTE restore USING bk.original, bk.row_id, bk.written;
            END IF;
            GET DIAGNOSTICS one = ROW_COUNT;
            restored := restored + one;
        END LOOP;
    END IF;

    -- A staged fit: the rows nudge_apply has not written yet are dropped.
    DELETE FROM nudge.fit_staged AS s WHERE s.fit_id = f.fit_id;
    UPDATE nudge.fits AS x SET status = 'reverted', reverted_at = pg_catalog.now() WHERE x.fit_id = f.fit_id;
    IF restored < backups THEN
        RAISE NOTICE 'nudge: % of % backed-up rows of fit % were changed or deleted since the fit and were left as they are',
                     backups - restored, backups, f.fit_id;
    END IF;
    RETURN restored;
END
$fn$;
COMMENT ON FUNCTION nudge_revert(bigint, text) IS 'Restore the vectors an in-place nudge_fit overwrote; returns the number of rows restored';

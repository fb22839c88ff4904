-- nudge_apply(fit_id): write a staged fit (nudge_fit(..., staged => true)) in short
-- transactions, so that no row stays locked by the fit for longer than one batch.
--
-- Each nudge_apply_step writes up to batch_rows rows (compare-and-set against what the fit
-- read, backups under the fit) and the procedure commits it. A CALL inside a transaction
-- block cannot commit (2D000): run it on its own. Interrupted (cancel, error, crash), the
-- committed batches stay and the fit stays staged: CALL nudge_apply again to go on, or
-- nudge_revert to undo what was written. Only the role that staged the fit (or a superuser)
-- may apply it (nudge_apply_step checks). Progress NOTICEs as nudge_fit's (nudge.progress,
-- nudge.progress_interval): none before the first interval, then at most one per interval.
--
-- A procedure that commits cannot have a SET clause, so this one runs under the caller's
-- search_path: every function is schema-qualified and every operator is written
-- OPERATOR(pg_catalog.op) with its operands cast to the types of that operator.

CREATE PROCEDURE @extschema@.nudge_apply(fit_id pg_catalog.int8, batch_rows pg_catalog.int4 DEFAULT 256,
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

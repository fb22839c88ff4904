-- nudge_apply(fit_id): write a staged fit (nudge_fit(..., staged => true)) in short
-- transactions, so that no row stays locked by the fit for longer than one batch.
--
-- Each nudge_apply_step writes up to batch_rows rows (compare-and-set against what the fit
-- read, backups under the fit) and the procedure commits it. A CALL inside a transaction
-- block cannot commit (2D000): run it on its own. Interrupted (cancel, error, crash), the
-- committed batches stay and the fit stays staged: CALL nudge_apply again to go on, or
-- nudge_revert to undo what was written. No SET clause (a procedure with one cannot commit):
-- references are schema-qualified instead. Progress NOTICEs as nudge_fit's (nudge.progress,
-- nudge.progress_interval): none before the first interval, then at most one per interval.

CREATE PROCEDURE nudge_apply(fit_id bigint, batch_rows int DEFAULT 256,
                             INOUT rows_written bigint DEFAULT NULL, INOUT rows_skipped bigint DEFAULT NULL)
LANGUAGE plpgsql
AS $proc$
DECLARE
    left_staged bigint;
    done        bigint;
    t0          timestamptz := pg_catalog.clock_timestamp();
    last_report timestamptz := t0;
    progress    boolean := coalesce(pg_catalog.current_setting('nudge.progress', true)::boolean, true);
    every       interval := pg_catalog.make_interval(
                    secs => coalesce(pg_catalog.current_setting('nudge.progress_interval', true)::float8, 2));
BEGIN
    IF nudge_apply.fit_id IS NULL OR nudge_apply.batch_rows IS NULL THEN
        RAISE EXCEPTION 'fit_id and batch_rows must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    LOOP
        left_staged := public.nudge_apply_step(nudge_apply.fit_id, nudge_apply.batch_rows);
        COMMIT;
        EXIT WHEN left_staged = 0;
        IF progress AND pg_catalog.clock_timestamp() - last_report >= every THEN
            last_report := pg_catalog.clock_timestamp();
            SELECT f.rows_written + f.rows_skipped INTO done FROM nudge.fits AS f WHERE f.fit_id = nudge_apply.fit_id;
            RAISE NOTICE 'nudge_apply: writing rows: % of % (%), % s', done, done + left_staged,
                         pg_catalog.round(100.0 * done / (done + left_staged)) || '%',
                         pg_catalog.round(EXTRACT(epoch FROM last_report - t0)::numeric, 1);
        END IF;
    END LOOP;
    SELECT f.rows_written, f.rows_skipped INTO nudge_apply.rows_written, nudge_apply.rows_skipped
      FROM nudge.fits AS f WHERE f.fit_id = nudge_apply.fit_id;
    IF nudge_apply.rows_skipped > 0 THEN
        RAISE NOTICE 'nudge: % of % rows to write were changed or deleted by the application after fit % read them and were left as they are',
                     nudge_apply.rows_skipped, nudge_apply.rows_written + nudge_apply.rows_skipped, nudge_apply.fit_id;
    END IF;
END
$proc$;
COMMENT ON PROCEDURE nudge_apply(bigint, int, bigint, bigint) IS 'Write a staged nudge_fit in batches of batch_rows rows, each committed on its own; returns the rows written and skipped';

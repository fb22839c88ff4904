"""Online fits (lock => 'rows', the default): the application's INSERT, UPDATE and DELETE go
on while a fit runs, and none of them is lost or overwritten.

The fit is held in its write deterministically, as in test_safety.py: another connection
holds a row lock on the first row the fit writes (rows are written in id order), so the fit
has read the table, computed, and waits before writing anything. Meanwhile the application
writes from other connections with lock_timeout = '1s': each must succeed, none may wait on
the fit. Afterwards every application write is there, the fit skipped exactly the moved rows
the application changed (rows_skipped, nudge.fits, the NOTICE), it wrote and backed up all
others, and a revert restores only what the fit wrote. A strict fit (lock => 'table') in the
same position makes the same statements fail with 55P03.
"""
from __future__ import annotations

import pytest

from test_safety import (KEEP, Call, RowLock, connect, copy_table, fingerprint, fresh_db, make_corpus,
                         make_labels, sqlstate, wait_until, waits_on_lock, write_fit_sql)

DB = "nudge_online"
N, DIM, W = 5000, 16, 2000          # corpus rows; the fit moves and writes rows 1..W
APP_VEC = "{0.25,-0.5,1,0,0,0,0,0,0,0,0,0,0,0,0,0.125}"


@pytest.fixture(scope="module")
def online(db):
    conn = fresh_db(db, DB)
    conn.execute("SET nudge.progress = off")
    make_corpus(conn, "base", N, DIM)
    conn.execute("ALTER TABLE base ADD COLUMN note text")
    make_labels(conn, N, DIM, 1000, 3, W)
    conn.execute("ANALYZE")
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def no_leftovers(db):
    yield
    db.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = %s AND pid <> ALL(%s) AND pid <> pg_backend_pid()""", (DB, list(KEEP)))


def rows(conn, table):
    """id -> (embedding as text, note)."""
    return {i: (e, n) for i, e, n in conn.execute(f"SELECT id, embedding::text, note FROM {table}")}


def app(dbname, statements, timeout="1s"):
    """Run the application's statements (autocommit, lock_timeout) on a connection of their
    own; returns the errors' SQLSTATEs (None for success), in order."""
    out = []
    with connect(dbname) as conn:
        conn.execute(f"SET lock_timeout = '{timeout}'")
        for s in statements:
            try:
                conn.execute(s)
                out.append(None)
            except Exception as e:  # noqa: BLE001 - the test inspects it
                out.append(sqlstate(e))
    return out


def fit_held_at_first_row(c, table, lock=None, qrels="qrels_w"):
    """Start a fit of `table` held at its first write (row 1 locked by another connection);
    returns (the fit's Call, the RowLock)."""
    hold = RowLock(DB, table, 1)
    fit = Call(DB, write_fit_sql(table, 0.4, lock=lock, qrels=qrels))
    fit.start()
    wait_until(lambda: waits_on_lock(c, fit.pid, "row"), "the fit to wait on its first row")
    return fit, hold


def test_application_writes_during_an_online_fit(online):
    c = online
    copy_table(c, "base", "t_on")
    before = rows(c, "t_on")
    # what the fit writes with nobody else around
    copy_table(c, "base", "t_on_alone")
    c.execute(write_fit_sql("t_on_alone", 0.4)).fetchall()
    alone = rows(c, "t_on_alone")

    # an application transaction that updates a moved row and stays open while the fit reads:
    # the fit reads the committed value, and reaches the row while the update is uncommitted
    open_tx = connect(DB)
    open_tx.execute("BEGIN")
    open_tx.execute(f"UPDATE t_on SET embedding = '{APP_VEC}' WHERE id = 11")
    open_xid = open_tx.execute("SELECT pg_current_xact_id()::xid::text").fetchone()[0]

    c.execute("DROP TABLE IF EXISTS qrels_on")
    c.execute("CREATE TABLE qrels_on AS SELECT * FROM qrels_w")     # refit below reads it again
    fit, hold = fit_held_at_first_row(c, "t_on", qrels="qrels_on")
    modes = {m for (m,) in c.execute("""SELECT mode FROM pg_locks WHERE pid = %s AND granted
                                            AND locktype = 'relation' AND relation = 't_on'::regclass""", (fit.pid,))}
    assert "ShareUpdateExclusiveLock" in modes and "ShareRowExclusiveLock" not in modes, modes
    moved_changed = {5, 6, 7, 8, 9, 10, 1500}
    errors = app(DB, [
        f"UPDATE t_on SET embedding = '{APP_VEC}' WHERE id IN (5, 6, 7, 1500)",   # moved rows: embedding
        "UPDATE t_on SET note = 'app' WHERE id = 8",                               # moved row: another column
        "DELETE FROM t_on WHERE id IN (9, 10, 4000)",                              # moved rows and one not moved
        f"UPDATE t_on SET embedding = '{APP_VEC}', note = 'app' WHERE id = 3000",  # a row not moved
        f"INSERT INTO t_on VALUES ({N + 1}, '{APP_VEC}', 'app')",                  # a new row
        "ALTER TABLE t_on ADD COLUMN x int",                                       # DDL waits for the fit
    ])
    assert errors == [None] * 5 + ["55P03"], errors
    assert fit.is_alive()

    hold.release()
    # the fit writes rows 2..10 and waits for the open transaction's row 11
    wait_until(lambda: c.execute("""SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted
                                      AND locktype = 'transactionid' AND transactionid::text = %s""",
                                 (fit.pid, open_xid)).fetchone()[0] == 1,
               "the fit to wait for the open transaction's row")
    open_tx.execute("COMMIT")
    open_tx.close()
    moved_changed.add(11)
    fit.finish()
    assert fit.error is None, fit.error
    fit_id, skipped = fit.result[0][0], fit.result[0][7]

    assert skipped == len(moved_changed) == 8
    assert any(f"{skipped} of {W} rows to write were changed or deleted" in m for _, m in fit.notices), fit.notices
    assert c.execute("SELECT rows_written, rows_skipped, lock FROM nudge.fits WHERE fit_id = %s",
                     (fit_id,)).fetchone() == (W - skipped, skipped, "rows")
    backed_up = {int(r) for (r,) in c.execute("SELECT row_id FROM nudge.fit_backups WHERE fit_id = %s", (fit_id,))}
    assert backed_up == set(range(1, W + 1)) - moved_changed

    after = rows(c, "t_on")
    # every application write is there
    for i in (5, 6, 7, 11, 1500, 3000, N + 1):
        assert after[i][0] == APP_VEC, i
    assert after[8] == (before[8][0], "app")                    # not nudged, the app's note kept
    assert after[3000][1] == "app" and after[N + 1][1] == "app"
    assert not {9, 10, 4000} & set(after)
    # every other row holds what the fit alone writes (moved) or what it held (not moved)
    for i, v in after.items():
        if i in moved_changed or i in (3000, N + 1):
            continue
        assert v == alone[i], i

    # a refit starts from the originals: rows the fit wrote come out the same, the row whose
    # other column changed is nudged now, the rows the application wrote start from its values
    # (and the deleted rows' labels are gone)
    c.execute("DELETE FROM qrels_on WHERE doc_id IN (9, 10)")
    refit, refit_skipped = c.execute("SELECT fit_id, rows_skipped FROM nudge_refit(%s)", (fit_id,)).fetchone()
    assert refit_skipped == 0
    after_refit = rows(c, "t_on")
    assert after_refit[8] == (alone[8][0], "app")
    assert all(after_refit[i] == after[i] for i in backed_up)
    app_rows = [str(i) for i in (5, 6, 7, 11, 1500)]
    originals = c.execute("SELECT row_id, original::text FROM nudge.fit_backups WHERE fit_id = %s AND row_id = ANY(%s)",
                          (refit, app_rows)).fetchall()
    assert sorted(originals) == sorted((i, APP_VEC) for i in app_rows)
    assert all(after_refit[int(i)][0] != APP_VEC for i in app_rows)
    assert c.execute("SELECT nudge_revert(%s)", (refit,)).fetchone()[0] == W - 2
    assert rows(c, "t_on") == after

    # revert restores exactly the rows the fit wrote and leaves the application's values
    assert c.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0] == W - skipped
    reverted = rows(c, "t_on")
    assert reverted == {**{i: v for i, v in before.items() if i not in (9, 10, 4000)},
                        **{i: after[i] for i in moved_changed | {3000, N + 1} if i in after}}


def test_revert_skips_a_row_updated_while_it_waits(online):
    """An online revert waiting on a row the application is updating re-checks the row when
    the application commits, and leaves it with the application's value."""
    c = online
    copy_table(c, "base", "t_rv")
    before_fit = rows(c, "t_rv")
    fit_id = c.execute(write_fit_sql("t_rv", 0.4)).fetchone()[0]
    tx = connect(DB)
    tx.execute("BEGIN")
    tx.execute(f"UPDATE t_rv SET embedding = '{APP_VEC}' WHERE id = 42")
    revert = Call(DB, f"SELECT nudge_revert({fit_id})")
    revert.start()
    wait_until(lambda: waits_on_lock(c, revert.pid, "row"), "the revert to wait for the application's row")
    # meanwhile other writes go on (rows the revert does not restore: the rows it has
    # restored are locked until it commits)
    assert app(DB, [f"INSERT INTO t_rv VALUES ({N + 1}, '{APP_VEC}')",
                    "DELETE FROM t_rv WHERE id = 4000"]) == [None, None]
    tx.execute("COMMIT")
    tx.close()
    revert.finish()
    assert revert.error is None, revert.error
    assert revert.result[0][0] == W - 1                         # row 42 left as the app wrote it
    assert any("1 of 2000 backed-up rows" in m for _, m in revert.notices), revert.notices
    after = rows(c, "t_rv")
    assert after[42][0] == APP_VEC and after[N + 1][0] == APP_VEC and 4000 not in after
    assert {i: v for i, v in after.items() if i not in (42, N + 1)} == \
        {i: v for i, v in before_fit.items() if i not in (42, 4000)}


def test_strict_fit_blocks_the_application(online):
    c = online
    copy_table(c, "base", "t_strict")
    before = fingerprint(c, "t_strict")
    fit, hold = fit_held_at_first_row(c, "t_strict", lock="table")
    errors = app(DB, [f"INSERT INTO t_strict VALUES ({N + 1}, '{APP_VEC}')",
                      f"UPDATE t_strict SET embedding = '{APP_VEC}' WHERE id = 3000",
                      "DELETE FROM t_strict WHERE id = 4000"], timeout="200ms")
    assert errors == ["55P03"] * 3, errors
    hold.release()
    fit.finish()
    assert fit.error is None and fit.result[0][7] == 0
    assert c.execute("SELECT rows_written, rows_skipped, lock FROM nudge.fits WHERE fit_id = %s",
                     (fit.result[0][0],)).fetchone() == (W, 0, "table")
    assert fingerprint(c, "t_strict") != before


def test_failed_online_fit_leaves_application_writes_and_nothing_else(online):
    """A cancelled online fit leaves the application's writes made during it and nothing of its own."""
    c = online
    copy_table(c, "base", "t_cancel")
    fit, hold = fit_held_at_first_row(c, "t_cancel")
    assert app(DB, [f"UPDATE t_cancel SET embedding = '{APP_VEC}' WHERE id = 5"]) == [None]
    expect = fingerprint(c, "t_cancel")
    fits_before = c.execute("SELECT count(*) FROM nudge.fits").fetchone()[0]
    c.execute("SELECT pg_cancel_backend(%s)", (fit.pid,))
    fit.finish()
    hold.release()
    assert sqlstate(fit.error) == "57014", fit.error
    assert fingerprint(c, "t_cancel") == expect
    assert c.execute("SELECT count(*) FROM nudge.fits").fetchone()[0] == fits_before


def test_online_fit_with_nothing_changed_is_the_strict_fit(online):
    c = online
    for lock in ("rows", "table"):
        copy_table(c, "base", f"t_same_{lock}")
        r = c.execute(write_fit_sql(f"t_same_{lock}", 0.4, lock=lock)).fetchone()
        assert r[7] == 0
    assert fingerprint(c, "t_same_rows") == fingerprint(c, "t_same_table")


def test_online_fit_into_a_target_column(online):
    """A fit into a target column skips a row the application changed during the fit and
    gives it a copy of the source, like every row the fit does not move."""
    c = online
    copy_table(c, "base", "t_tgt")
    c.execute("ALTER TABLE t_tgt ADD COLUMN nudged real[]")
    hold = RowLock(DB, "t_tgt", 1)
    fit = Call(DB, write_fit_sql("t_tgt", 0.4).replace("negative_rule", "target => 'nudged', negative_rule"))
    fit.start()
    wait_until(lambda: waits_on_lock(c, fit.pid, "row"), "the fit to wait on its first row")
    assert app(DB, [f"UPDATE t_tgt SET embedding = '{APP_VEC}' WHERE id = 5",
                    f"INSERT INTO t_tgt VALUES ({N + 1}, '{APP_VEC}')"]) == [None, None]
    hold.release()
    fit.finish()
    assert fit.error is None, fit.error
    assert fit.result[0][7] == 1
    assert c.execute("SELECT embedding::text, nudged::text FROM t_tgt WHERE id = 5").fetchone() == (APP_VEC, APP_VEC)
    # every other row present when the fit wrote has its nudged or copied vector; the new row none
    assert c.execute("SELECT count(*) FROM t_tgt WHERE nudged IS NULL").fetchone()[0] == 1
    assert c.execute("SELECT count(*) FROM t_tgt WHERE id <= %s AND nudged <> embedding", (W,)).fetchone()[0] == W - 1


# --- staged fits: nudge_fit(..., staged => true), then CALL nudge_apply in short transactions

def staged_fit_sql(table):
    return write_fit_sql(table, 0.4).replace("negative_rule", "staged => true, negative_rule")


def text_order(ids):
    """nudge_apply writes a fit's rows in row id text order."""
    return sorted(ids, key=str)


def test_staged_fit_keeps_no_row_locked_past_its_batch(online):
    """A staged fit writes nothing; nudge_apply writes it in batches, each committed: an
    application UPDATE of a row an earlier batch wrote succeeds with lock_timeout = '100ms'
    while the apply is still going (in one transaction it would wait for the whole write).
    Rows the application changed before nudge_apply reached them are skipped; the rest equal
    the unstaged fit's; revert restores exactly what the fit wrote."""
    c = online
    copy_table(c, "base", "t_st")
    copy_table(c, "base", "t_st_alone")
    c.execute(write_fit_sql("t_st_alone", 0.4)).fetchall()
    alone = rows(c, "t_st_alone")
    before = rows(c, "t_st")

    r = c.execute(staged_fit_sql("t_st")).fetchone()
    fit_id, changed, skipped = r[0], r[3], r[7]
    assert (changed, skipped) == (W, 0)
    assert rows(c, "t_st") == before                                    # staged: nothing written
    assert c.execute("SELECT status, rows_written FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone() == ("staged", 0)
    assert c.execute("SELECT count(*) FROM nudge.fit_staged WHERE fit_id = %s", (fit_id,)).fetchone()[0] == W
    # no other fit or revert of the column while it is staged
    assert app(DB, [write_fit_sql("t_st", 0.4)]) == ["55006"]

    # the application changes rows after the fit read them, before nudge_apply
    assert app(DB, [f"UPDATE t_st SET embedding = '{APP_VEC}' WHERE id IN (6, 1500)",
                    "UPDATE t_st SET note = 'app' WHERE id = 8",
                    "DELETE FROM t_st WHERE id = 9",
                    f"INSERT INTO t_st VALUES ({N + 1}, '{APP_VEC}', 'app')"]) == [None] * 4

    # hold nudge_apply on row 5: batches of 100 rows in text order, so 14 batches commit first
    order = text_order(range(1, W + 1))
    pos = order.index(5)
    committed, in_flight = order[:pos // 100 * 100], order[pos // 100 * 100:pos // 100 * 100 + 100]
    hold = RowLock(DB, "t_st", 5)
    apply = Call(DB, f"CALL nudge_apply({fit_id}, batch_rows => 100)",
                 setup=["SET nudge.progress = on", "SET nudge.progress_interval = 0"])
    apply.start()
    wait_until(lambda: waits_on_lock(c, apply.pid, "row"), "nudge_apply to wait on row 5")
    # progress after every committed batch (interval 0); the rows counted include the skipped
    wait_until(lambda: apply.notices and apply.notices[-1][1].startswith(f"nudge_apply: writing rows: 1400 of {W} (70%), "),
               "the progress NOTICE of the 14th batch")
    status, written = c.execute("SELECT status, rows_written + rows_skipped FROM nudge.fits WHERE fit_id = %s",
                                (fit_id,)).fetchone()
    assert status == "staged" and written == len(committed) == 1400, (status, written)
    later = next(i for i in order[pos // 100 * 100 + 100:] if i not in (6, 8, 9, 1500))
    done = [i for i in committed if i not in (6, 8, 9, 1500)][:2]
    assert not {later, *done} & set(in_flight)
    # rows an earlier batch wrote are not locked any more; a row not reached yet neither
    errors = app(DB, [f"UPDATE t_st SET embedding = '{APP_VEC}' WHERE id = {done[0]}",
                      f"UPDATE t_st SET note = 'app' WHERE id = {done[1]}",
                      f"UPDATE t_st SET embedding = '{APP_VEC}' WHERE id = {later}"], timeout="100ms")
    assert errors == [None] * 3, errors
    hold.release()
    apply.finish()
    assert apply.error is None, apply.error
    skipped_ids = {6, 8, 9, 1500, later}
    assert apply.result == [(W - len(skipped_ids), len(skipped_ids))]
    assert any(f"{len(skipped_ids)} of {W} rows to write were changed" in m for _, m in apply.notices), apply.notices
    assert c.execute("SELECT status, rows_written, rows_skipped FROM nudge.fits WHERE fit_id = %s",
                     (fit_id,)).fetchone() == ("applied", W - len(skipped_ids), len(skipped_ids))
    assert c.execute("SELECT count(*) FROM nudge.fit_staged WHERE fit_id = %s", (fit_id,)).fetchone()[0] == 0
    backed_up = {int(r) for (r,) in c.execute("SELECT row_id FROM nudge.fit_backups WHERE fit_id = %s", (fit_id,))}
    assert backed_up == set(range(1, W + 1)) - skipped_ids

    after = rows(c, "t_st")
    for i in (6, 1500, done[0], later, N + 1):
        assert after[i][0] == APP_VEC, i
    assert after[8] == (before[8][0], "app") and after[done[1]] == (alone[done[1]][0], "app") and 9 not in after
    for i, v in after.items():
        if i not in skipped_ids | {done[0], done[1], N + 1}:
            assert v == alone[i], i

    # revert: the rows still holding what the fit wrote go back (also done[1], whose note the
    # application changed); the others keep the application's values
    assert c.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0] == W - len(skipped_ids) - 1
    reverted = rows(c, "t_st")
    expect = {i: v for i, v in before.items() if i != 9}
    expect.update({i: after[i] for i in (6, 8, 1500, later, done[0], N + 1)})
    expect[done[1]] = (before[done[1]][0], "app")
    assert reverted == expect


def test_interrupted_apply_goes_on_or_reverts(online):
    """A cancelled nudge_apply leaves its committed batches and the fit staged: another
    session's CALL nudge_apply finishes it (the same vectors as an unstaged fit), or
    nudge_revert puts the table back as it was."""
    c = online
    copy_table(c, "base", "t_int_alone")
    c.execute(write_fit_sql("t_int_alone", 0.4)).fetchall()
    alone = rows(c, "t_int_alone")
    for finish in ("apply", "revert"):
        t = f"t_int_{finish}"
        copy_table(c, "base", t)
        before = rows(c, t)
        fit_id = c.execute(staged_fit_sql(t)).fetchone()[0]
        hold = RowLock(DB, t, 5)
        apply = Call(DB, f"CALL nudge_apply({fit_id}, batch_rows => 100)")
        apply.start()
        wait_until(lambda: waits_on_lock(c, apply.pid, "row"), "nudge_apply to wait on row 5")
        c.execute("SELECT pg_cancel_backend(%s)", (apply.pid,))
        apply.finish()
        hold.release()
        assert sqlstate(apply.error) == "57014", apply.error
        assert c.execute("SELECT status, rows_written FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone() == ("staged", 1400)
        part = rows(c, t)
        assert sum(part[i] != before[i] for i in before) == 1400
        if finish == "apply":
            with connect(DB) as other:
                assert other.execute(f"CALL nudge_apply({fit_id})").fetchone() == (W, 0)
            assert rows(c, t) == alone
            assert c.execute("SELECT status FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone()[0] == "applied"
        else:
            assert c.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0] == 1400
            assert rows(c, t) == before
            assert c.execute("SELECT count(*) FROM nudge.fit_staged WHERE fit_id = %s", (fit_id,)).fetchone()[0] == 0
            # the column is free again
            assert c.execute(write_fit_sql(t, 0.4)).fetchone()[7] == 0

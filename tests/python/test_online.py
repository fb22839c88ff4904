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

from test_safety import (KEEP, Call, RowLock, connect, copy_table, fingerprint, make_corpus,
                         make_labels, sqlstate, wait_until, waits_on_lock, write_fit_sql)

DB = "nudge_online"
N, DIM, W = 5000, 16, 2000          # corpus rows; the fit moves and writes rows 1..W
APP_VEC = "{0.25,-0.5,1,0,0,0,0,0,0,0,0,0,0,0,0,0.125}"


@pytest.fixture(scope="module")
def online(db):
    from psycopg import sql
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    conn = connect(DB)
    KEEP.add(conn.info.backend_pid)
    conn.execute("CREATE EXTENSION nudge")
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

"""Safety under concurrency, cancellation, crashes and dump/restore.

* Two fits of one table at once (online or strict): the second waits for the first (and,
  under REPEATABLE READ, fails cleanly); the result is exactly what the second fit gives alone.
* Writes of the application during a strict fit (lock => 'table') wait for it and are never
  overwritten afterwards (online fits: test_online.py).
* A revert racing a fit waits for it and then sees it (online or strict).
* pg_cancel_backend and statement_timeout in the corpus read, the gamma search and the
  write: the statement fails with query_canceled, the table and nudge.fits are unchanged,
  the lock is released and the backend keeps working.
* SIGKILL of the backend in the middle of the write, on a private cluster: after crash
  recovery every row holds its old vector and nudge.fits has no trace of the fit; a fit
  that committed before a crash is there in full and can be reverted.
* pg_dump / pg_restore keeps nudge.fits and the backups, and revert works after restore.

Phases are made to happen deterministically where the database allows it: the write is
held at its last row by a row lock another connection holds (nudge writes rows in a known
order), and a waiting backend is seen in pg_stat_activity. The read and the gamma search
are pure computation, so a cancel is sent when the phase's progress NOTICE arrives
(nudge.progress_interval = 0) and the test checks, from the NOTICEs, that the statement
stopped in that phase (retrying a few times on a busy machine).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

import pg_util

N, DIM, Q, LABELS = 30000, 32, 6000, 6      # the corpus for cancellation (read ~0.5 s, gamma ~1 s)
W = 5000                                    # rows one fixed-gamma fit writes, in id order
SMALL_N, SMALL_W = 5000, 2000               # the corpus for the concurrency tests
TIMEOUT = 120                               # seconds any wait may take before the test fails
DATABASES = ("nudge_safety", "nudge_safety_small", "nudge_dump_src", "nudge_dump_dst")
KEEP = set()                                # backends of the module's own connections


# --------------------------------------------------------------------------- helpers

def connect(dbname, **kw):
    import psycopg
    return psycopg.connect(dbname=dbname, autocommit=True, connect_timeout=10, **kw)


def wait_until(pred, what, timeout=TIMEOUT):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def fingerprint(conn, table):
    """Row count and md5 over the text of every row (float4 prints exactly)."""
    return conn.execute(
        f"SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {table} AS x"
    ).fetchone()[0]


def fits_of(conn, table):
    return conn.execute("SELECT fit_id, status FROM nudge.fits WHERE corpus = %s::regclass ORDER BY fit_id",
                        (table,)).fetchall()


def waits_on_lock(admin, pid, what=None):
    """Whether backend `pid` waits for a heavyweight lock: of a table (what="relation"), of a
    row (what="row": a row lock or the transaction holding it), or any."""
    row = admin.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()
    if row is None or row[0] != "Lock":
        return False
    return what is None or (row[1] == "relation") == (what == "relation")


class Call(threading.Thread):
    """One statement on its own connection in a background thread. Records the result or the
    error and every NOTICE as (seconds since start, message). The connection stays open
    (self.conn) so the test can check that the backend still works."""

    def __init__(self, dbname, sql, setup=(), on_notice=None):
        super().__init__(daemon=True)
        self.conn = connect(dbname)
        self.pid = self.conn.info.backend_pid
        for s in setup:
            self.conn.execute(s)
        self.sql, self.on_notice = sql, on_notice
        self.result = self.error = None
        self.notices = []
        self.t0 = None
        self.conn.add_notice_handler(self._notice)

    def _notice(self, d):
        self.notices.append((time.monotonic() - self.t0, d.message_primary))
        if self.on_notice:
            self.on_notice(self, d.message_primary)

    def run(self):
        self.t0 = time.monotonic()
        try:
            self.result = self.conn.execute(self.sql).fetchall()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            self.error = e

    def finish(self):
        self.join(TIMEOUT)
        if self.is_alive():                 # do not leave it running for the next tests
            with connect("postgres") as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (self.pid,))
            self.join(10)
            pytest.fail(f"statement still running after {TIMEOUT} s: {self.sql}")
        self.conn.remove_notice_handler(self._notice)
        return self

    def phases(self):
        """Progress phases in the order they were reported ("nudge_fit: <phase>: ...")."""
        out = []
        for _, m in self.notices:
            parts = m.split(": ")
            if len(parts) >= 3 and (not out or out[-1] != parts[1]):
                out.append(parts[1])
        return out


def sqlstate(e):
    return getattr(getattr(e, "diag", None), "sqlstate", None)


def write_fit_sql(table, gamma=0.5, qrels="qrels_w", lock=None):
    """A fit with a fixed gamma and every query for training: it writes the labelled rows
    (every one moves with negative_rule 'move') in the order of their first label, i.e. by id.
    `lock`: 'rows' or 'table' (None: the default, 'rows')."""
    lock_arg = f", lock => '{lock}'" if lock else ""
    return (f"SELECT * FROM nudge_fit('{table}', 'embedding', 'q', '{qrels}', gamma => {gamma}, "
            f"negative_rule => 'move', validation_queries => 'q_none', validation_qrels => 'qrels_none'{lock_arg})")


# the table lock each mode of a fit or revert takes
LOCK_MODE = {"rows": "ShareUpdateExclusiveLock", "table": "ShareRowExclusiveLock"}


class RowLock:
    """Holds a row lock on `table`.id = `row_id` (SELECT ... FOR UPDATE in an open
    transaction): a fit that reaches that row in its write waits there. SELECT FOR UPDATE
    takes ROW SHARE on the table, which conflicts with neither of the fit's locks."""

    def __init__(self, dbname, table, row_id):
        self.conn = connect(dbname)
        self.conn.execute("BEGIN")
        self.conn.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", (row_id,))

    def release(self):
        if not self.conn.closed:
            self.conn.execute("COMMIT")
            self.conn.close()


def assert_backend_usable(conn, table):
    """The backend works on: no transaction left open, a fit runs (on `tiny`), and the lock
    on `table` is gone (an UPDATE of it from another connection does not wait)."""
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert conn.info.transaction_status.name == "IDLE"
    conn.execute("SET nudge.progress = off")
    rows = conn.execute("SELECT records_changed FROM nudge_fit('tiny', 'embedding', 'q', 'qrels_tiny', "
                        "gamma => 0.1, dry_run => true, validation_queries => 'q_none', "
                        "validation_qrels => 'qrels_none')").fetchall()
    assert len(rows) == 1
    with connect(conn.info.dbname) as other:
        other.execute("SET lock_timeout = '5s'")
        other.execute(f"UPDATE {table} SET embedding = embedding WHERE id = -1")


def make_corpus(conn, table, n, dim):
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"""CREATE TABLE {table} AS
        SELECT i AS id, ARRAY(SELECT sin(i * 0.37 * j + j)::real FROM generate_series(1, {dim}) j) AS embedding
          FROM generate_series(1, {n}) i""")
    conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")


def make_labels(conn, n, dim, q, labels, w):
    """q (ids 1..q), qrels (random-looking labels, for searches), qrels_w (docs 1..w in id
    order, for fixed-gamma writes), q_none and qrels_none (empty validation tables)."""
    conn.execute("DROP TABLE IF EXISTS q, qrels, qrels_w, q_none, qrels_none")
    conn.execute(f"""CREATE TABLE q AS
        SELECT k AS id, ARRAY(SELECT sin((k * 13 % {n} + 1) * 0.37 * j + j + 0.3 * cos(k * j))::real
                                FROM generate_series(1, {dim}) j) AS embedding
          FROM generate_series(1, {q}) k""")
    conn.execute(f"""CREATE TABLE qrels AS
        SELECT k AS query_id, (k * 13 + m * 7919) % {n} + 1 AS doc_id
          FROM generate_series(1, {q}) k, generate_series(0, {labels - 1}) m ORDER BY k, m""")
    conn.execute(f"""CREATE TABLE qrels_w AS
        SELECT (d - 1) % {q} + 1 AS query_id, d AS doc_id FROM generate_series(1, {w}) d ORDER BY d""")
    conn.execute("CREATE TABLE q_none AS SELECT * FROM q LIMIT 0")
    conn.execute("CREATE TABLE qrels_none AS SELECT * FROM qrels LIMIT 0")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def no_leftovers(db):
    """After each test, end every backend a test left in the module's databases (a failed
    test must not leave a fit running, or a lock held, for the next one)."""
    yield
    db.execute("""SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE datname = ANY(%s) AND pid <> ALL(%s) AND pid <> pg_backend_pid()""",
               (list(DATABASES), list(KEEP)))


SAFETY_DB = "nudge_safety"


def fresh_db(db, name):
    """Database `name`, created anew with the extension; a connection to it (kept open by the
    module: not terminated between tests)."""
    from psycopg import sql
    db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn = connect(name)
    KEEP.add(conn.info.backend_pid)
    conn.execute("CREATE EXTENSION nudge")
    return conn


@pytest.fixture(scope="module")
def safety(db):
    """A database of its own with the corpus for cancellation (`big`) and a small one for
    the concurrency tests (`small`, copied per test)."""
    conn = fresh_db(db, SAFETY_DB)
    make_corpus(conn, "big", N, DIM)
    make_labels(conn, N, DIM, Q, LABELS, W)
    make_corpus(conn, "tiny", 100, DIM)
    conn.execute("CREATE TABLE qrels_tiny AS SELECT * FROM qrels_w WHERE doc_id <= 50")
    conn.execute("ANALYZE")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def small_db(db):
    """A database with a small corpus `small` (SMALL_N rows) and its labels."""
    name = "nudge_safety_small"
    conn = fresh_db(db, name)
    conn.execute("SET nudge.progress = off")
    make_corpus(conn, "small", SMALL_N, 16)
    make_labels(conn, SMALL_N, 16, 1000, 3, SMALL_W)
    conn.execute("ANALYZE")
    conn.dbname = name
    yield conn
    conn.close()


def copy_table(conn, src, dst):
    conn.execute(f"DROP TABLE IF EXISTS {dst}")
    conn.execute(f"CREATE TABLE {dst} AS SELECT * FROM {src}")
    conn.execute(f"ALTER TABLE {dst} ADD PRIMARY KEY (id)")


def fitted_alone(conn, src, sql_for, name):
    """Fingerprint of `src` after the fit `sql_for(table)` on a fresh copy of it."""
    copy_table(conn, src, name)
    conn.execute(sql_for(name)).fetchall()
    return fingerprint(conn, name)


# --------------------------------------------------------------------------- concurrency

@pytest.mark.parametrize("lock", ["table", "rows"])
def test_two_fits_on_one_table_serialise(small_db, lock):
    c, dbname = small_db, small_db.dbname
    copy_table(c, "small", "t_two")
    original = fingerprint(c, "t_two")
    expect_first = fitted_alone(c, "small", lambda t: write_fit_sql(t, 0.3), "t_two_a")
    expect_second = fitted_alone(c, "small", lambda t: write_fit_sql(t, 0.6), "t_two_b")
    assert len({original, expect_first, expect_second}) == 3

    hold = RowLock(dbname, "t_two", SMALL_W)             # the first fit's last row
    first = Call(dbname, write_fit_sql("t_two", 0.3, lock=lock), setup=["SET nudge.progress = off"])
    first.start()
    wait_until(lambda: waits_on_lock(c, first.pid, "row"), "the first fit to wait on its last row")
    second = Call(dbname, write_fit_sql("t_two", 0.6, lock=lock), setup=["SET nudge.progress = off"])
    second.start()
    wait_until(lambda: waits_on_lock(c, second.pid, "relation"), "the second fit to wait for the table lock")
    # the second waits for the table (in its mode's lock), not for a row
    assert c.execute("""SELECT mode FROM pg_locks WHERE pid = %s AND NOT granted AND locktype = 'relation'
                          AND relation = 't_two'::regclass""", (second.pid,)).fetchone() == (LOCK_MODE[lock],)
    assert fingerprint(c, "t_two") == original           # nothing visible yet
    hold.release()
    first.finish()
    second.finish()
    assert first.error is None and second.error is None, (first.error, second.error)
    # the second fit started from the original vectors: the table is exactly its result
    assert fingerprint(c, "t_two") == expect_second
    (f1, s1), (f2, s2) = fits_of(c, "t_two")
    assert (f1, f2) == (first.result[0][0], second.result[0][0]) and s1 == s2 == "applied"
    # and the stack of backups is consistent: revert both, get the original back
    c.execute("SELECT nudge_revert(%s)", (f2,))
    assert fingerprint(c, "t_two") == expect_first
    c.execute("SELECT nudge_revert(%s)", (f1,))
    assert fingerprint(c, "t_two") == original


def test_second_fit_under_repeatable_read_fails_cleanly(small_db):
    c, dbname = small_db, small_db.dbname
    copy_table(c, "small", "t_rr")
    expect_first = fitted_alone(c, "small", lambda t: write_fit_sql(t, 0.3), "t_rr_a")
    hold = RowLock(dbname, "t_rr", SMALL_W)
    first = Call(dbname, write_fit_sql("t_rr", 0.3), setup=["SET nudge.progress = off"])
    first.start()
    wait_until(lambda: waits_on_lock(c, first.pid, "row"), "the first fit to wait on its last row")
    second = Call(dbname, write_fit_sql("t_rr", 0.6),
                  setup=["SET nudge.progress = off", "BEGIN ISOLATION LEVEL REPEATABLE READ", "SELECT 1"])
    second.start()
    wait_until(lambda: waits_on_lock(c, second.pid, "relation"), "the second fit to wait for the table lock")
    hold.release()
    first.finish()
    second.finish()
    assert first.error is None
    # its snapshot predates the first fit: it may not overwrite rows the first fit changed
    assert sqlstate(second.error) == "40001", second.error
    second.conn.execute("ROLLBACK")
    assert fingerprint(c, "t_rr") == expect_first
    assert [s for _, s in fits_of(c, "t_rr")] == ["applied"]
    assert c.execute("SELECT count(*) FROM nudge.fit_backups WHERE corpus = 't_rr'::regclass").fetchone()[0] == SMALL_W


def test_application_writes_wait_for_a_strict_fit_and_are_kept(small_db):
    c, dbname = small_db, small_db.dbname
    copy_table(c, "small", "t_app")
    moved, app_vec = 7, "{0.25,-0.5,1,0,0,0,0,0,0,0,0,0,0,0,0,0.125}"
    # an application transaction that wrote before the fit started: the fit waits for it
    # and starts from its value
    early = connect(dbname)
    early.execute("BEGIN")
    early.execute("UPDATE t_app SET embedding = %s WHERE id = 3", (app_vec,))
    hold = RowLock(dbname, "t_app", SMALL_W)
    fit = Call(dbname, write_fit_sql("t_app", 0.4, lock="table"), setup=["SET nudge.progress = off"])
    fit.start()
    wait_until(lambda: waits_on_lock(c, fit.pid, "relation"), "the fit to wait for the application's transaction")
    assert c.execute("SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted AND locktype = 'relation'",
                     (fit.pid,)).fetchone()[0] == 1
    early.execute("COMMIT")
    early.close()
    wait_until(lambda: waits_on_lock(c, fit.pid, "row"), "the fit to reach its last row")
    # the application writes while the fit runs: an update of a row the fit moves, an insert
    app_update = Call(dbname, f"UPDATE t_app SET embedding = '{app_vec}' WHERE id = {moved} RETURNING id")
    app_insert = Call(dbname, f"INSERT INTO t_app VALUES ({SMALL_N + 1}, '{app_vec}') RETURNING id")
    app_update.start()
    app_insert.start()
    wait_until(lambda: waits_on_lock(c, app_update.pid, "relation") and waits_on_lock(c, app_insert.pid, "relation"),
               "the application's writes to wait for the fit")
    hold.release()
    fit.finish()
    app_update.finish()
    app_insert.finish()
    assert fit.error is None and app_update.error is None and app_insert.error is None
    fit_id = fit.result[0][0]
    # the fit started from the application's committed value of row 3 ...
    assert c.execute("SELECT original::real[]::text FROM nudge.fit_backups WHERE fit_id = %s AND row_id = '3'",
                     (fit_id,)).fetchone()[0] == app_vec
    # ... and the writes made during the fit are there, not overwritten
    assert c.execute(f"SELECT embedding::text FROM t_app WHERE id = {moved}").fetchone()[0] == app_vec
    assert c.execute(f"SELECT embedding::text FROM t_app WHERE id = {SMALL_N + 1}").fetchone()[0] == app_vec
    # a later fit moves row `moved` again, from the application's value, not from the backup
    refit = c.execute(write_fit_sql("t_app", 0.4)).fetchone()[0]
    assert c.execute("SELECT original::real[]::text FROM nudge.fit_backups WHERE fit_id = %s AND row_id = %s",
                     (refit, str(moved))).fetchone()[0] == app_vec
    # reverting both leaves the application's values
    c.execute("SELECT nudge_revert(%s)", (refit,))
    c.execute("SELECT nudge_revert(%s)", (fit_id,))
    assert c.execute(f"SELECT embedding::text FROM t_app WHERE id IN (3, {moved}) ORDER BY id").fetchall() == \
        [(app_vec,), (app_vec,)]


@pytest.mark.parametrize("lock", ["table", "rows"])
def test_revert_racing_a_fit_waits_and_sees_it(small_db, lock):
    c, dbname = small_db, small_db.dbname
    copy_table(c, "small", "t_rev")
    first = c.execute(write_fit_sql("t_rev", 0.3)).fetchone()[0]
    hold = RowLock(dbname, "t_rev", SMALL_W)
    fit = Call(dbname, write_fit_sql("t_rev", 0.6, lock=lock), setup=["SET nudge.progress = off"])
    fit.start()
    wait_until(lambda: waits_on_lock(c, fit.pid, "row"), "the fit to wait on its last row")
    revert = Call(dbname, f"SELECT nudge_revert({first}, lock => '{lock}')")
    revert.start()
    wait_until(lambda: waits_on_lock(c, revert.pid, "relation"), "the revert to wait for the table lock")
    after_second = fitted_alone(c, "small", lambda t: write_fit_sql(t, 0.6), "t_rev_b")
    hold.release()
    fit.finish()
    revert.finish()
    assert fit.error is None
    # the fit committed while the revert waited: reverting the older fit is refused
    assert sqlstate(revert.error) == "55000", revert.error
    assert f"followed by fit {fit.result[0][0]}" in str(revert.error)
    assert fingerprint(c, "t_rev") == after_second

    # two reverts of the same fit at once: one restores, the other finds it reverted (held
    # back by an application's write lock (strict) or by a lock like a fit's (online))
    blocker = connect(dbname)
    blocker.execute("BEGIN")
    blocker.execute(f"LOCK TABLE t_rev IN {'ROW' if lock == 'table' else 'SHARE UPDATE'} EXCLUSIVE MODE")
    second = fit.result[0][0]
    r1 = Call(dbname, f"SELECT nudge_revert({second}, lock => '{lock}')")
    r2 = Call(dbname, f"SELECT nudge_revert({second}, lock => '{lock}')")
    r1.start()
    r2.start()
    wait_until(lambda: waits_on_lock(c, r1.pid, "relation") and waits_on_lock(c, r2.pid, "relation"),
               "both reverts to wait for the table lock")
    blocker.execute("COMMIT")
    r1.finish()
    r2.finish()
    outcomes = sorted([(r.error is None, sqlstate(r.error)) for r in (r1, r2)])
    assert outcomes == [(False, "55000"), (True, None)], (r1.error, r2.error)
    assert [s for _, s in fits_of(c, "t_rev")] == ["applied", "reverted"]


# --------------------------------------------------------------------------- cancellation

def _state(conn, table):
    return (fingerprint(conn, table), conn.execute("SELECT count(*) FROM nudge.fits").fetchone()[0],
            conn.execute("SELECT count(*) FROM nudge.fit_backups").fetchone()[0])


SEARCH_FIT = ("SELECT * FROM nudge_fit('big', 'embedding', 'q', 'qrels', validation_fraction => 0.75, "
              "negative_rule => 'move')")
NOTICE_SETUP = ["SET nudge.progress = on", "SET nudge.progress_interval = 0", "SET nudge.batch_rows = 64"]


def _landed(call):
    return call.phases()[-1] if call.phases() else None


@pytest.mark.parametrize("phase", ["scanning corpus", "choosing gamma"])
def test_pg_cancel_backend_in_read_and_gamma_search(safety, phase):
    canceller = connect(SAFETY_DB)
    for attempt in range(3):
        before = _state(safety, "big")
        fired = []

        def on_notice(call, msg, fired=fired):
            if not fired and f": {phase}: " in msg:
                fired.append(canceller.execute("SELECT pg_cancel_backend(%s)", (call.pid,)).fetchone()[0])

        call = Call(SAFETY_DB, SEARCH_FIT, setup=NOTICE_SETUP, on_notice=on_notice)
        call.start()
        call.finish()
        assert fired == [True], (fired, call.phases())
        assert sqlstate(call.error) == "57014", call.error
        assert "canceling statement due to user request" in str(call.error)
        assert _state(safety, "big") == before
        assert_backend_usable(call.conn, "big")
        call.conn.close()
        if _landed(call) == phase:
            break
    else:
        pytest.fail(f"the cancel never landed in {phase!r}: last phases {call.phases()}")
    canceller.close()


def _calibrate(dbname, setup, fit_sql):
    """Times (s) at which a dry run of `fit_sql` reports each phase: {phase: (first, last)}."""
    call = Call(dbname, fit_sql.replace("negative_rule", "dry_run => true, negative_rule"), setup=setup)
    call.start()
    call.finish()
    assert call.error is None, call.error
    spans = {}
    for t, m in call.notices:
        parts = m.split(": ")
        if len(parts) >= 3:
            lo, hi = spans.get(parts[1], (t, t))
            spans[parts[1]] = (min(lo, t), max(hi, t))
    call.conn.close()
    return spans


# The statement_timeout is aimed at the middle of a phase, so the phase must last long enough
# to aim at on a fast, quiet machine too: a corpus 8x the size of `big`, and small batches.
TIMEOUT_SETUP = ["SET nudge.progress = on", "SET nudge.progress_interval = 0", "SET nudge.batch_rows = 16"]
TIMEOUT_FIT = SEARCH_FIT.replace("nudge_fit('big'", "nudge_fit('big_t'")


@pytest.mark.parametrize("phase", ["scanning corpus", "choosing gamma"])
def test_statement_timeout_in_read_and_gamma_search(safety, phase):
    if safety.execute("SELECT to_regclass('big_t') IS NULL").fetchone()[0]:
        make_corpus(safety, "big_t", 8 * N, DIM)
    for attempt in range(3):
        lo, hi = _calibrate(SAFETY_DB, TIMEOUT_SETUP, TIMEOUT_FIT)[phase]
        before = _state(safety, "big_t")
        assert hi - lo > 0.2, f"{phase} is too short to aim at: {lo:.3f}..{hi:.3f} s"
        ms = int((lo + hi) / 2 * 1000)
        call = Call(SAFETY_DB, TIMEOUT_FIT, setup=TIMEOUT_SETUP + [f"SET statement_timeout = {ms}"])
        call.start()
        call.finish()
        if call.error is None:
            # the whole fit beat the calibrated moment (a noisy machine): nothing was tested;
            # put the table back and aim again
            call.conn.execute("SELECT nudge_revert(max(fit_id)) FROM nudge.fits WHERE corpus = 'big_t'::regclass"
                              " AND status = 'applied'")
            assert _state(safety, "big_t")[0] == before[0]
            call.conn.close()
            continue
        assert sqlstate(call.error) == "57014", call.error
        assert "statement timeout" in str(call.error)
        assert _state(safety, "big_t") == before
        call.conn.execute("RESET statement_timeout")
        assert_backend_usable(call.conn, "big_t")
        call.conn.close()
        if _landed(call) == phase:
            break
    else:
        pytest.fail(f"the timeout never landed in {phase!r}: last phases {call.phases()}")


def _cancel_in_write(safety, timeout_ms=None):
    """Run the fixed-gamma fit of `big`; it writes all rows but the last (held by a row
    lock), then is cancelled there: by pg_cancel_backend, or by its statement_timeout.
    Returns the seconds it took to reach the last row, or None if a statement_timeout fired
    before it got there."""
    before = _state(safety, "big")
    hold = RowLock(SAFETY_DB, "big", W)
    setup = ["SET nudge.progress = on", "SET nudge.progress_interval = 0"]
    if timeout_ms:
        setup.append(f"SET statement_timeout = {timeout_ms}")
    call = Call(SAFETY_DB, write_fit_sql("big"), setup=setup)
    call.start()
    try:
        wait_until(lambda: waits_on_lock(safety, call.pid, "row") or not call.is_alive(),
                   "the fit to wait on its last row")
        if not call.is_alive():
            assert timeout_ms and sqlstate(call.error) == "57014", f"the fit ended before its last row: {call.error}"
            assert _state(safety, "big") == before
            call.conn.close()
            return None
        reached = time.monotonic() - call.t0
        # (the client reads the NOTICEs in its own time; they come every 256 rows)
        wait_until(lambda: call.phases()[-1:] == ["writing rows"] and
                   int(call.notices[-1][1].split(": ")[2].split(" ")[0]) >= W - 256, "the write's progress NOTICEs")
        if not timeout_ms:
            assert safety.execute("SELECT pg_cancel_backend(%s)", (call.pid,)).fetchone() == (True,)
        call.finish()
    finally:
        hold.release()
    assert sqlstate(call.error) == "57014", call.error
    assert ("statement timeout" if timeout_ms else "user request") in str(call.error)
    assert _state(safety, "big") == before
    call.conn.execute("RESET statement_timeout")
    assert_backend_usable(call.conn, "big")
    call.conn.close()
    return reached


def test_cancel_and_statement_timeout_in_the_write(safety):
    """Both leave every row the fit wrote and every backup it made rolled back."""
    reached = _cancel_in_write(safety)
    # the timeout: well after the fit reached its last row the first time, so that it fires
    # while the fit waits there (on a busy machine, again with more time if it came early)
    timeout = max(1.0, 3 * reached)
    for attempt in range(3):
        if _cancel_in_write(safety, timeout_ms=int(timeout * 1000)) is not None:
            break
        timeout *= 2
    else:
        pytest.fail(f"the fit never reached its last row within {timeout / 2:.1f} s")


# --------------------------------------------------------------------------- SIGKILL

class PrivateCluster(pg_util.PrivateCluster):
    """A throwaway cluster, so that crash recovery disturbs no other test."""

    def __init__(self):
        super().__init__(prefix="nudge-crash-", options="-c restart_after_crash=on -c fsync=on", timeout=TIMEOUT)

    def wait_ready(self, crashes=0):
        """A connection once the server has restarted after `crashes` backend crashes in all
        (else a connection made before the postmaster reacts to a crash dies with it)."""
        end = time.monotonic() + TIMEOUT
        wait_until(lambda: self.log().count("terminated by signal 9") >= crashes
                   and self.log().count("database system is ready to accept connections") >= crashes + 1,
                   f"the server to restart after crash {crashes}")
        while True:
            try:
                conn = self.connect()
                conn.execute("SELECT 1")
                return conn
            except Exception:  # noqa: BLE001 - still recovering
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)


def test_sigkill_in_the_write_leaves_old_or_new_vectors(db):
    cluster = PrivateCluster()
    try:
        c = cluster.connect()
        c.execute("CREATE EXTENSION nudge")
        c.execute("SET nudge.progress = off")
        make_corpus(c, "k_docs", SMALL_N, 16)
        make_labels(c, SMALL_N, 16, 1000, 3, SMALL_W)
        original = fingerprint(c, "k_docs")
        # fit 1 commits
        f1 = c.execute(write_fit_sql("k_docs", 0.3)).fetchone()[0]
        after_f1 = fingerprint(c, "k_docs")
        assert after_f1 != original

        # fit 2 writes all rows but its last, then its backend is killed
        lock = cluster.connect()
        lock.execute("BEGIN")
        lock.execute("SELECT 1 FROM k_docs WHERE id = %s FOR UPDATE", (SMALL_W,))
        fit2 = cluster.connect()
        pid = fit2.info.backend_pid
        done = {}

        def run():
            try:
                done["result"] = fit2.execute(write_fit_sql("k_docs", 0.6)).fetchall()
            except Exception as e:  # noqa: BLE001
                done["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(lambda: waits_on_lock(c, pid, "row"), "fit 2 to wait on its last row (all others written)")
        try:
            os.kill(pid, signal.SIGKILL)
        except PermissionError:
            pytest.skip("not allowed to signal the server's backends (run as root or as the server's user)")
        t.join(TIMEOUT)
        assert "error" in done, done                     # its connection died
        for conn in (c, lock, fit2):
            conn.close()
        c = cluster.wait_ready(crashes=1)
        # the postmaster logs the crash as it restarts; the log file may lag the restart
        wait_until(lambda: "terminated by signal 9" in cluster.log(), "the crash to appear in the server log")
        # after recovery: every row has fit 1's vector, nudge.fits and the backups know fit 1 only
        assert fingerprint(c, "k_docs") == after_f1
        assert fits_of(c, "k_docs") == [(f1, "applied")]
        assert c.execute("SELECT count(*), count(*) FILTER (WHERE fit_id = %s) FROM nudge.fit_backups",
                         (f1,)).fetchone() == (SMALL_W, SMALL_W)

        # a fit that committed just before a crash is there in full, and can be reverted
        f3 = c.execute(write_fit_sql("k_docs", 0.6)).fetchone()[0]
        after_f3 = fingerprint(c, "k_docs")
        victim = cluster.connect()
        os.kill(victim.info.backend_pid, signal.SIGKILL)
        c.close()
        victim.close()
        c = cluster.wait_ready(crashes=2)
        assert fingerprint(c, "k_docs") == after_f3
        assert fits_of(c, "k_docs") == [(f1, "applied"), (f3, "applied")]
        c.execute("SELECT nudge_revert(%s)", (f3,))
        c.execute("SELECT nudge_revert(%s)", (f1,))
        assert fingerprint(c, "k_docs") == original
        c.close()
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- dump / restore

def column_md5(conn, table, column):
    return conn.execute(f"SELECT md5(string_agg(id || ':' || {column}::text, ',' ORDER BY id)) FROM {table}").fetchone()[0]


def test_dump_restore_keeps_fits_and_backups(db, tmp_path):
    """pg_dump -Fc of a database with applied, stacked, dry-run, reverted and target fits
    (real[], double precision[] under quoted names, and pgvector's vector where it exists),
    pg_restore into a new database: nudge.fits and nudge.fit_backups are identical, the fits
    revert to the original vectors, the sequence and the row-level security carry over."""
    from psycopg import sql
    bindir = pg_util.bindir()
    src, dst = "nudge_dump_src", "nudge_dump_dst"
    for name in (src, dst):
        db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(src)))
    c = connect(src)
    c.execute("CREATE EXTENSION nudge")
    c.execute("SET nudge.progress = off")
    make_corpus(c, "d_docs", 3000, 8)
    make_labels(c, 3000, 8, 500, 2, 1200)
    c.execute('CREATE SCHEMA "Odd"')
    c.execute('CREATE TABLE "Odd"."D 2" AS SELECT id, embedding::float8[] AS "E", NULL::float8[] AS t FROM d_docs')
    tables = {"d_docs": "embedding", '"Odd"."D 2"': '"E"'}
    vector = c.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0] == 1
    if vector:
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE TABLE d_vec AS SELECT id, embedding::vector(8) AS embedding FROM d_docs")
        tables["d_vec"] = "embedding"
    original = {t: column_md5(c, t, col) for t, col in tables.items()}
    # a stack of two applied fits, a dry run, a reverted fit, a target fit, and more applied
    applied = [c.execute(write_fit_sql("d_docs", 0.3)).fetchone()[0]]
    c.execute(write_fit_sql("d_docs", 0.5).replace("gamma => 0.5", "gamma => 0.5, dry_run => true"))
    applied.append(c.execute("SELECT fit_id FROM nudge_fit('d_docs', 'embedding', 'q', 'qrels')").fetchone()[0])
    r = c.execute("""SELECT fit_id FROM nudge_fit('"Odd"."D 2"', 'E', 'q', 'qrels', gamma => 0.2)""").fetchone()[0]
    c.execute("SELECT nudge_revert(%s)", (r,))
    c.execute("""SELECT * FROM nudge_fit('"Odd"."D 2"', 'E', 'q', 'qrels', gamma => 0.2, target => 't')""")
    applied.append(c.execute("""SELECT fit_id FROM nudge_fit('"Odd"."D 2"', 'E', 'q', 'qrels', gamma => 0.4)""").fetchone()[0])
    if vector:
        applied.append(c.execute(write_fit_sql("d_vec", 0.4)).fetchone()[0])
    fits_q = "SELECT f.*, f.corpus::text, f.queries::text, f.qrels::text FROM nudge.fits f ORDER BY fit_id"
    backups_q = "SELECT b.*, b.corpus::text FROM nudge.fit_backups b ORDER BY fit_id, row_id"
    fits, backups = c.execute(fits_q).fetchall(), c.execute(backups_q).fetchall()
    fitted = {t: fingerprint(c, t) for t in tables}
    assert {f[-3] for f in fits} == set(tables)          # (corpus::text of every fit)
    assert len(backups) > 1000 and all(original[t] != column_md5(c, t, col) for t, col in tables.items())
    c.close()

    dump = tmp_path / "nudge.dump"
    subprocess.run([str(bindir / "pg_dump"), "-Fc", "-f", str(dump), "-d", src], check=True, timeout=120)
    db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dst)))
    restore = subprocess.run([str(bindir / "pg_restore"), "--exit-on-error", "-d", dst, str(dump)],
                             timeout=120, capture_output=True, text=True)
    assert restore.returncode == 0, restore.stderr

    c = connect(dst)
    c.execute("SET nudge.progress = off")
    assert c.execute(fits_q).fetchall() == fits
    assert c.execute(backups_q).fetchall() == backups
    assert {t: fingerprint(c, t) for t in tables} == fitted
    # the restored fits revert, newest first per column, to the original vectors
    for fit_id in reversed(applied):
        c.execute("SELECT nudge_revert(%s)", (fit_id,))
    assert {t: column_md5(c, t, col) for t, col in tables.items()} == original
    # the sequence went along: a new fit gets a new id; the row-level security still holds
    new = c.execute(write_fit_sql("d_docs", 0.3)).fetchone()[0]
    assert new > max(f[0] for f in fits)
    c.execute("DROP ROLE IF EXISTS nudge_dump_nobody")
    c.execute("CREATE ROLE nudge_dump_nobody")
    try:
        c.execute("SET ROLE nudge_dump_nobody")
        assert c.execute("SELECT count(*) FROM nudge.fit_backups").fetchone()[0] == 0
    finally:
        c.execute("RESET ROLE")
        c.execute("DROP ROLE nudge_dump_nobody")
    c.close()

"""nudge_refit as a pg_cron job: scheduled refits run in pg_cron's process context (no client,
signals from pg_cancel_backend, cron.job_run_details as the only output) exactly as when called
directly.

Each server is a private cluster started here with
    shared_preload_libraries = 'pg_cron', cron.database_name = 'nudge_cron'
in one of pg_cron's two job modes:
  * libpq (cron.use_background_workers = off, pg_cron's default and what most users run): the
    launcher opens a libpq connection per run to cron.host (default 'localhost'; initdb's trust
    authentication lets it in) and the job runs in an ordinary client backend;
  * bgworker (cron.use_background_workers = on): the job runs in a background worker
    (max_worker_processes raised so the launcher, jobs and parallel workers fit), which passes
    its NOTICEs to the launcher. pg_cron 1.6.7 may then record a failed run as 'succeeded',
    return_message one of its NOTICEs (seen here in 5 of 6 runs of a failing job after nudge's
    progress NOTICEs; citusdata/pg_cron#405), so there the database sets nudge.progress = off,
    as users of that mode should for their refit jobs.
In libpq mode the database sets nudge.progress_interval = 0: every refit reports progress all
along (pg_cron reads and drops the NOTICEs).

Servers (skipped with a note when the server lacks pg_cron or nudge):
  * PostgreSQL 18 from NUDGE_CRON_BINDIR (default: the server on PATH, as pg_util.bindir()),
    pg_cron 1.6.7 (scripts/cron.sh), nudge's release build (scripts/test.sh installs it);
    jobs on a seconds schedule ('3 seconds': the first run starts 3 s after cron.schedule; once
    it has started the test moves the schedule to Jan 1st, and unschedules the job when the run
    has ended);
  * PostgreSQL 15 from NUDGE_CRON_PG15_BINDIR (scripts/test.sh: Debian's, with
    postgresql-15-cron 1.4.2 and the debug build `cargo pgrx test pg15` installed): pg_cron
    1.4 has minute schedules only, so one job, '* * * * *', which starts at the next minute
    (a pg_cron >= 1.5 takes the seconds schedule on any version).

The corpus is SciFact (data/scifact, the paper split); labels accrue in two halves of the
training queries: the first fit sees the first half, the scheduled refit all of them.
"""
from __future__ import annotations

import os
import pathlib
import re
import subprocess
import time

import pytest

from pg_util import DIM, PrivateCluster, bindir, column_md5, vec_text

DB = "nudge_cron"
TIMEOUT = 120                        # seconds a job may take to start and finish
INTERVAL = 3                         # seconds schedule on pg_cron >= 1.5: the first run starts after it
SETTINGS = f"-c shared_preload_libraries=pg_cron -c cron.database_name={DB}"
MODES = {  # server options, and nudge's progress setting for the database's sessions
    "libpq": ("-c cron.use_background_workers=off", "nudge.progress_interval = 0"),
    "bgworker": ("-c cron.use_background_workers=on -c max_worker_processes=16", "nudge.progress = off"),
}
FIT_COLUMNS = ("gamma", "train_queries", "validation_query_count", "records_moving", "records_changed",
               "rows_written", "rows_skipped", "validation_before", "validation_after", "status")


def _pg_config(bin_dir, flag):
    return subprocess.run([str(pathlib.Path(bin_dir) / "pg_config"), flag], check=True,
                          capture_output=True, text=True).stdout.strip()


def _missing(bin_dir):
    """Why the server in bin_dir cannot run these tests, or None."""
    if not (pathlib.Path(bin_dir) / "pg_config").exists():
        return f"no pg_config in {bin_dir}"
    lib = pathlib.Path(_pg_config(bin_dir, "--pkglibdir"))
    ext = pathlib.Path(_pg_config(bin_dir, "--sharedir")) / "extension"
    if not (lib / "pg_cron.so").exists():
        return f"no pg_cron in {lib} (scripts/cron.sh builds it; Debian: postgresql-15-cron)"
    if not (ext / "nudge.control").exists():
        return f"nudge is not installed in {ext}"
    return None


class CronServer:
    """A private cluster with pg_cron in `mode`, database DB with pg_cron, nudge (and vector,
    where the server has it) and SciFact loaded: docs_base (the corpus), q_train / l_train
    (training queries and qrels, `half` 1 or 2), q_val / l_val."""

    def __init__(self, bin_dir, mode, ref):
        self.mode = mode
        options, progress = MODES[mode]
        self.pg = PrivateCluster(prefix=f"nudge-cron-{mode}-", options=f"{SETTINGS} {options}",
                                 bin_dir=bin_dir)
        with self.pg.connect() as admin:
            admin.execute(f"CREATE DATABASE {DB}")
            admin.execute(f"ALTER DATABASE {DB} SET {progress}")
        self.conn = self.connect()
        self.conn.execute("SET client_min_messages = warning")
        self.conn.execute("CREATE EXTENSION pg_cron")
        cron = self.conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'").fetchone()[0]
        self.seconds = tuple(int(x) for x in re.findall(r"\d+", cron)[:2]) >= (1, 5)   # seconds schedules
        self.vector = self.conn.execute(
            "SELECT count(*) > 0 FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0]
        if self.vector:
            self.conn.execute("CREATE EXTENSION vector")
        self.conn.execute("CREATE EXTENSION nudge")
        self._load(ref)

    def connect(self):
        return self.pg.connect(DB)

    def literal(self, row):
        text = vec_text(row)
        return text if self.vector else "{" + text[1:-1] + "}"

    def _load(self, ref):
        ds, c = ref.ds, self.conn
        vtype = f"vector({DIM})" if self.vector else "real[]"
        c.execute(f"CREATE TABLE docs_base (id text PRIMARY KEY, embedding {vtype})")
        with c.cursor() as cur, cur.copy("COPY docs_base (id, embedding) FROM STDIN") as cp:
            for did, row in zip(ds.doc_ids, ds.docs):
                cp.write_row((did, self.literal(row)))
        half = len(ref.train) // 2
        for name, ids in (("train", ref.train), ("val", ref.val)):
            c.execute(f"CREATE TABLE q_{name} (id text PRIMARY KEY, embedding {vtype}, half int)")
            c.execute(f"CREATE TABLE l_{name} (query_id text, doc_id text, score int, half int)")
            with c.cursor() as cur:
                with cur.copy(f"COPY q_{name} (id, embedding, half) FROM STDIN") as cp:
                    for i, (qid, row) in enumerate(zip(ids, ds.query_matrix(ids))):
                        cp.write_row((qid, self.literal(row), 1 + (i >= half)))
                with cur.copy(f"COPY l_{name} (query_id, doc_id, score, half) FROM STDIN") as cp:
                    for i, qid in enumerate(ids):
                        for did, score in sorted(ds.qrels.get(qid, {}).items()):
                            cp.write_row((qid, did, score, 1 + (i >= half)))
        c.execute("ANALYZE")

    def case(self, name, twin=None):
        """Corpus table `name` (and `twin`, the same rows) fitted on the first half of the
        labels, which accrue in q_<name> / l_<name>; returns the fit ids."""
        c = self.conn
        c.execute(f"CREATE TABLE q_{name} AS SELECT id, embedding FROM q_train WHERE half = 1")
        c.execute(f"CREATE TABLE l_{name} AS SELECT query_id, doc_id, score FROM l_train WHERE half = 1")
        fits = []
        for t in (name, twin) if twin else (name,):
            c.execute(f"CREATE TABLE {t} (LIKE docs_base INCLUDING ALL)")
            c.execute(f"INSERT INTO {t} SELECT * FROM docs_base")
            fits.append(c.execute(
                f"SELECT fit_id FROM nudge_fit('{t}', 'embedding', 'q_{name}', 'l_{name}', "
                "validation_queries => 'q_val', validation_qrels => 'l_val')").fetchone()[0])
        return fits

    def add_labels(self, name):
        self.conn.execute(f"INSERT INTO q_{name} SELECT id, embedding FROM q_train WHERE half = 2")
        self.conn.execute(f"INSERT INTO l_{name} SELECT query_id, doc_id, score FROM l_train WHERE half = 2")

    def schedule(self, name, command):
        """Schedules the job, and once its first run has started moves the schedule out of
        reach (Jan 1st), so it runs once; returns the job id. (Not unscheduled yet: pg_cron
        cancels a job's running run when the job is unscheduled or deactivated.)"""
        every = f"{INTERVAL} seconds" if self.seconds else "* * * * *"
        jobid = self.conn.execute("SELECT cron.schedule(%s, %s, %s)", (name, every, command)).fetchone()[0]
        try:
            wait_until(lambda: self.runs(jobid), f"cron job {jobid} to start", TIMEOUT, poll=0.05)
        finally:
            self.conn.execute("SELECT cron.alter_job(%s, schedule => '0 0 1 1 *')", (jobid,))
        return jobid

    def runs(self, jobid):
        """(status, return_message, job_pid) of each run of the job, in order."""
        return self.conn.execute("SELECT status, return_message, job_pid FROM cron.job_run_details "
                                 "WHERE jobid = %s ORDER BY runid", (jobid,)).fetchall()

    def finished(self, jobid):
        """Waits for the job's run to end and returns it (status, return_message, job_pid);
        fails if it ran more than once."""
        try:
            wait_until(lambda: any(s in ("succeeded", "failed") for s, _, _ in self.runs(jobid)),
                       f"cron job {jobid} to finish", TIMEOUT)
        finally:
            self.conn.execute("SELECT cron.unschedule(%s)", (jobid,))
        runs = self.runs(jobid)
        assert len(runs) == 1, runs
        return runs[0]

    def run_job(self, name, command):
        return self.finished(self.schedule(name, command))

    def stop(self):
        self.conn.close()
        self.pg.stop()


def wait_until(pred, what, timeout=TIMEOUT, poll=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")


def start_server(bin_dir, mode, ref, version):
    why = _missing(bin_dir)
    if why:
        pytest.skip(f"PostgreSQL {version} with pg_cron not available: {why}")
    return CronServer(bin_dir, mode, ref)


@pytest.fixture(scope="module", params=list(MODES))
def server(request, ref):
    s = start_server(os.environ.get("NUDGE_CRON_BINDIR") or str(bindir()), request.param, ref, 18)
    yield s
    s.stop()


def fit_row(conn, fit_id):
    return dict(zip(FIT_COLUMNS, conn.execute(f"SELECT {', '.join(FIT_COLUMNS)} FROM nudge.fits "
                                              "WHERE fit_id = %s", (fit_id,)).fetchone()))


def refits_of(conn, fit_id):
    return [r for (r,) in conn.execute("SELECT fit_id FROM nudge.fits WHERE refit_of = %s ORDER BY fit_id",
                                       (fit_id,))]


def vectors(conn, table):
    return dict(conn.execute(f"SELECT id, embedding::text FROM {table}").fetchall())


def catalog_state(conn):
    return conn.execute("SELECT (SELECT count(*) FROM nudge.fits), (SELECT count(*) FROM nudge.fit_backups), "
                        "(SELECT count(*) FROM nudge.fit_staged)").fetchone()


def check_applied_refit(s, name="docs_a"):
    """The scheduled refit of a fit whose labels doubled equals the same refit called directly
    on a twin table: same fit record, same vectors; backed up row for row."""
    c = s.conn
    fit, twin_fit = s.case(name, twin=f"{name}_twin")
    first = fit_row(c, fit)
    fitted = vectors(c, name)
    s.add_labels(name)
    status, message, _ = s.run_job(f"nudge-refit-{name}", f"SELECT * FROM nudge_refit({fit})")
    assert status == "succeeded", message
    assert message in ("1 row", "SELECT 1"), message
    [refit] = refits_of(c, fit)
    got = fit_row(c, refit)
    assert got["status"] == "applied"
    assert got["train_queries"] > first["train_queries"]

    c.execute(f"SELECT * FROM nudge_refit({twin_fit})").fetchall()
    [direct] = refits_of(c, twin_fit)
    assert got == fit_row(c, direct)
    after = vectors(c, name)
    assert after == vectors(c, f"{name}_twin")
    assert after != fitted
    backups = c.execute("SELECT count(*) FROM nudge.fit_backups WHERE fit_id = %s", (refit,)).fetchone()[0]
    assert backups == got["rows_written"] > 0


def test_scheduled_refit_applies_new_labels(server):
    check_applied_refit(server)


def test_failed_job_reports_nudge_error(server):
    """The queries table of the fit is gone: the job fails with nudge's message, and neither
    the corpus nor nudge's catalog changed."""
    import psycopg
    c = server.conn
    [fit] = server.case("docs_b")
    server.add_labels("docs_b")
    c.execute("DROP TABLE q_docs_b")
    before, catalog = column_md5(c, "embedding", "docs_b"), catalog_state(c)
    status, message, _ = server.run_job("nudge-refit-b", f"SELECT * FROM nudge_refit({fit})")
    assert status == "failed"
    with pytest.raises(psycopg.Error) as direct:
        c.execute(f"SELECT * FROM nudge_refit({fit})")
    assert direct.value.diag.message_primary in message, (message, direct.value.diag.message_primary)
    assert column_md5(c, "embedding", "docs_b") == before
    assert catalog_state(c) == catalog


class HeldRefit:
    """A scheduled refit of a new case `name` held half-way through its writes: another
    transaction holds the lock of a row it has to write (relevant to a newly labelled query)
    in the middle of the table, whose order is the order of the writes. Entered once the job's
    backend (pid) waits for that row; leaving releases the row."""

    def __init__(self, server, name, setup=""):
        c = server.conn
        [self.fit] = server.case(name)
        server.add_labels(name)
        self.held = c.execute(f"""SELECT d.id FROM {name} AS d
                                   WHERE d.id IN (SELECT doc_id FROM l_train WHERE half = 2)
                                   ORDER BY d.ctid
                                  OFFSET (SELECT count(DISTINCT doc_id) / 2 FROM l_train WHERE half = 2)
                                   LIMIT 1""").fetchone()[0]
        self.before, self.catalog = column_md5(c, "embedding", name), catalog_state(c)
        size = c.execute("SELECT pg_relation_size(%s)", (name,)).fetchone()[0]
        self.holder = server.connect()
        self.holder.execute("BEGIN")
        self.holder.execute(f"SELECT 1 FROM {name} WHERE id = %s FOR UPDATE", (self.held,))
        try:
            self.jobid = server.schedule(f"nudge-refit-{name}", f"{setup}SELECT * FROM nudge_refit({self.fit})")

            def waiting():
                for status, message, pid in server.runs(self.jobid):
                    assert status not in ("succeeded", "failed"), f"the run ended before the held row: {message}"
                    if status == "running" and pid and c.execute(
                            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone() == (True,):
                        return pid
                return None
            wait_until(waiting, lambda: f"the job's refit to wait for the held row; runs {server.runs(self.jobid)}, "
                                        f"backends {activity(c)}")
            self.pid = waiting()
            query = c.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (self.pid,)).fetchone()[0]
            assert f"nudge_refit({self.fit})" in query
            # it has written the rows before the held one (new row versions, not committed)
            assert c.execute("SELECT pg_relation_size(%s)", (name,)).fetchone()[0] > size
        except BaseException:
            self.release()
            raise

    def release(self):
        if self.holder is not None:
            self.holder.rollback()
            self.holder.close()
            self.holder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def activity(conn):
    return conn.execute("""SELECT pid, backend_type, state, wait_event_type, wait_event, left(query, 60)
                             FROM pg_stat_activity WHERE datname = %s""", (DB,)).fetchall()


def backend_gone(conn, pid):
    return conn.execute("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]


def test_cancelled_job_writes_nothing(server):
    """pg_cancel_backend of the job's backend while the refit is writing: the job fails with
    the cancel, the table is byte-equal and nudge's catalog has no trace of the refit."""
    c = server.conn
    with HeldRefit(server, "docs_c") as h:
        assert c.execute("SELECT pg_cancel_backend(%s)", (h.pid,)).fetchone()[0]
        status, message, _ = server.finished(h.jobid)
    assert status == "failed"
    assert "canceling statement due to user request" in message, message
    assert column_md5(c, "embedding", "docs_c") == h.before
    assert catalog_state(c) == h.catalog
    # the refit does write the held row: it was held in the write
    refit = c.execute(f"SELECT fit_id FROM nudge_refit({h.fit})").fetchone()[0]
    assert c.execute("SELECT count(*) FROM nudge.fit_backups WHERE fit_id = %s AND row_id = %s",
                     (refit, h.held)).fetchone()[0] == 1


def test_unscheduling_a_running_job(server):
    """cron.unschedule of a job while its refit runs: pg_cron records the run as failed, 'job
    canceled', at once. With background workers it terminates the worker: nothing is written.
    In libpq mode it only closes its connection: the backend goes on, and the refit commits
    unless the backend notices the lost client first (when a progress NOTICE cannot be sent;
    this job turns progress off, which makes the outcome certain). So the run says 'job
    canceled' while the refit is applied: nudge.fits, not cron.job_run_details, tells what
    happened; pg_cancel_backend(job_pid) is the way to stop a refit."""
    c = server.conn
    with HeldRefit(server, "docs_u", setup="SET nudge.progress = off; ") as h:
        c.execute("SELECT cron.unschedule(%s)", (h.jobid,))
        wait_until(lambda: server.runs(h.jobid)[0][0] == "failed", "pg_cron to give the run up")
        assert server.runs(h.jobid)[0][1] == "job canceled"
        if server.mode == "bgworker":
            wait_until(lambda: backend_gone(c, h.pid), "the job's worker to exit")
        else:
            assert not backend_gone(c, h.pid)
    wait_until(lambda: backend_gone(c, h.pid), "the job's backend to exit")
    refits = refits_of(c, h.fit)
    if server.mode == "bgworker":
        assert refits == []
        assert column_md5(c, "embedding", "docs_u") == h.before
        assert catalog_state(c) == h.catalog
    else:
        [refit] = refits
        assert fit_row(c, refit)["status"] == "applied"
        assert column_md5(c, "embedding", "docs_u") != h.before
        assert c.execute("SELECT count(*) FROM nudge.fit_backups WHERE fit_id = %s AND row_id = %s",
                         (refit, h.held)).fetchone()[0] == 1


def test_guarded_refit_rejected_under_cron(server):
    """A guard set the candidate loses on: the queries whose labels are new, each with its
    current top 10 minus its relevant documents labelled relevant, under other ids. The refit
    pulls the truly relevant documents towards those queries, pushing the guard's documents
    down. The job succeeds, writes nothing and records the rejection with both numbers; with
    a tolerance of 1 (ndcg can lose at most 1) the same candidate is applied."""
    import psycopg
    c = server.conn
    if server.mode != "libpq":
        pytest.skip("the guard's decision does not depend on the job mode: tested in libpq mode")
    [fit] = server.case("docs_d")
    server.add_labels("docs_d")
    c.execute("CREATE TABLE guard_q AS SELECT 'g' || id AS id, embedding FROM q_train WHERE half = 2")
    c.execute("""CREATE TABLE guard_qrels AS
                 SELECT 'g' || q.id AS query_id, d.id AS doc_id, 1 AS score
                   FROM q_train AS q,
                        LATERAL (SELECT id FROM docs_d ORDER BY embedding <=> q.embedding LIMIT 10) AS d
                  WHERE q.half = 2
                    AND NOT EXISTS (SELECT 1 FROM l_train AS l WHERE l.query_id = q.id AND l.doc_id = d.id)""")
    current = c.execute("SELECT ndcg FROM nudge_evaluate('docs_d', 'embedding', 'guard_q', 'guard_qrels')").fetchone()[0]
    before, catalog = column_md5(c, "embedding", "docs_d"), catalog_state(c)
    guard = "guard_queries => 'guard_q', guard_qrels => 'guard_qrels', guard_metric => 'ndcg@10'"
    status, message, _ = server.run_job(
        "nudge-refit-d", f"SELECT * FROM nudge_refit({fit}, {guard}, guard_tolerance => 0.0)")
    assert status == "succeeded", message
    [rejected] = refits_of(c, fit)
    row = c.execute("""SELECT status, guard_queries::text, guard_qrels::text, guard_metric, guard_tolerance,
                              guard_before, guard_after FROM nudge.fits WHERE fit_id = %s""", (rejected,)).fetchone()
    assert row[:5] == ("rejected", "guard_q", "guard_qrels", "ndcg@10", 0.0)
    assert row[5] == pytest.approx(current, abs=1e-12)
    assert row[6] < row[5]
    assert column_md5(c, "embedding", "docs_d") == before
    assert catalog_state(c)[1:] == catalog[1:]          # one more fit row, no backups, nothing staged

    status, message, _ = server.run_job(
        "nudge-refit-d2", f"SELECT * FROM nudge_refit({fit}, {guard}, guard_tolerance => 1.0)")
    assert status == "succeeded", message
    applied = refits_of(c, fit)[-1]
    st, g_before, g_after = c.execute("SELECT status, guard_before, guard_after FROM nudge.fits WHERE fit_id = %s",
                                      (applied,)).fetchone()
    assert st == "applied"
    assert (g_before, g_after) == pytest.approx((row[5], row[6]), abs=1e-12)
    now = c.execute("SELECT ndcg FROM nudge_evaluate('docs_d', 'embedding', 'guard_q', 'guard_qrels')").fetchone()[0]
    assert now == pytest.approx(g_after, abs=1e-12)

    # guard queries that are labelled training queries are refused
    with pytest.raises(psycopg.Error) as overlap:
        c.execute(f"SELECT * FROM nudge_refit({fit}, guard_queries => 'q_docs_d', guard_qrels => 'l_docs_d')")
    assert overlap.value.diag.sqlstate == "22023"


def test_scheduled_refit_pg15(ref):
    """PostgreSQL 15 with Debian's pg_cron 1.4.2 (libpq mode, minute schedule): the refit
    applies the new labels as a direct refit does."""
    bin_dir = os.environ.get("NUDGE_CRON_PG15_BINDIR")
    if not bin_dir:
        pytest.skip("NUDGE_CRON_PG15_BINDIR not set (scripts/test.sh sets it when postgresql-15-cron is installed)")
    s = start_server(bin_dir, "libpq", ref, 15)
    try:
        check_applied_refit(s)
    finally:
        s.stop()

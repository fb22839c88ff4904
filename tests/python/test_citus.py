"""nudge on a Citus cluster (coordinator + 2 workers): fits, evaluation, revert and refit on
distributed tables (by id and by another column), a reference table and a plain table of the
same Citus database give the single-node results.

The cluster is the one scripts/test.sh starts (scripts/citus.sh) and names in CITUS_COORD_PORT
and CITUS_DIR; without it (no Citus tarball or build) every test here is skipped with a note.
SciFact is loaded from data/scifact. The plain table `docs_local` on the coordinator is the
single-node reference: a plain table is fitted exactly as on a server without Citus (the
end-to-end tests check that path against numpy).
"""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest

from pg_util import DIM, parse_vec, vec_text

PORT = os.environ.get("CITUS_COORD_PORT")
pytestmark = pytest.mark.skipif(not PORT, reason="no Citus cluster (scripts/citus.sh needs the "
                                                 "Citus tarball in ../shared/vendor or a built copy)")
DB = os.environ.get("CITUS_DB", "nudge_citus")
VECTOR_TOL = 1e-6
TABLES = {  # name -> how it is placed
    "docs_local": None,
    "docs_by_id": "SELECT create_distributed_table('docs_by_id', 'id')",
    "docs_by_tenant": "SELECT create_distributed_table('docs_by_tenant', 'tenant')",
    "docs_ref": "SELECT create_reference_table('docs_ref')",
}
FIT = ("fit_id", "gamma", "records_changed", "validation_before", "validation_after")


def connect():
    import psycopg
    return psycopg.connect(host="127.0.0.1", port=int(PORT), user="postgres", dbname=DB,
                           autocommit=True, connect_timeout=10)


@pytest.fixture(scope="module")
def cluster(ref):
    """The coordinator with SciFact in every placement, and the paper split's queries."""
    conn = connect()
    ds = ref.ds
    conn.execute("SET client_min_messages = warning")
    for t in list(TABLES) + ["q_train", "q_val", "q_test", "r_train", "r_val", "r_test"]:
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
    conn.execute("DROP EXTENSION IF EXISTS nudge CASCADE")
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    conn.execute("CREATE EXTENSION nudge")
    for t, distribute in TABLES.items():
        key = "PRIMARY KEY (tenant, id)" if t == "docs_by_tenant" else "PRIMARY KEY (id)"
        conn.execute(f"CREATE TABLE {t} (id text, tenant int NOT NULL, embedding vector({DIM}), "
                     f"nudged vector({DIM}), {key})")
        with conn.cursor() as cur, cur.copy(f"COPY {t} (id, tenant, embedding) FROM STDIN") as cp:
            for i, (did, row) in enumerate(zip(ds.doc_ids, ds.docs)):
                cp.write_row((did, i % 7, vec_text(row)))
        if distribute:
            conn.execute(distribute)
    for name, ids in (("train", ref.train), ("val", ref.val), ("test", ref.test)):
        conn.execute(f"CREATE TABLE q_{name} (id text PRIMARY KEY, embedding vector({DIM}))")
        conn.execute(f"CREATE TABLE r_{name} (query_id text, doc_id text, score int)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY q_{name} (id, embedding) FROM STDIN") as cp:
                for qid, row in zip(ids, ds.query_matrix(ids)):
                    cp.write_row((qid, vec_text(row)))
            with cur.copy(f"COPY r_{name} (query_id, doc_id, score) FROM STDIN") as cp:
                for qid in ids:
                    for did, score in sorted(ds.qrels.get(qid, {}).items()):
                        cp.write_row((qid, did, score))
    conn.execute("ANALYZE")
    yield conn
    conn.close()


def vectors(conn, table, column="embedding"):
    return {rid: parse_vec(text) for rid, text in
            conn.execute(f"SELECT id, {column}::text FROM {table}")}


def fit(conn, table, **kw):
    args = dict(validation_queries="q_val", validation_qrels="r_val", **kw)
    named = "".join(f", {k} => %({k})s" for k in args)
    row = conn.execute(f"SELECT {', '.join(FIT)} FROM nudge_fit(%(t)s::regclass, 'embedding', "
                       f"'q_train', 'r_train'{named})", dict(t=table, **args)).fetchone()
    return dict(zip(FIT, row))


def table_md5(conn, table):
    return conn.execute(f"SELECT md5(string_agg(t::text, ';' ORDER BY tenant, id)) FROM {table} AS t").fetchone()[0]


def assert_same_vectors(got, exp, tol=VECTOR_TOL):
    assert got.keys() == exp.keys()
    worst = max(float(np.max(np.abs(got[k] - exp[k]))) for k in exp)
    assert worst <= tol, f"largest difference {worst}"


def test_placements_are_what_citus_says(cluster):
    rows = dict(cluster.execute(
        "SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition "
        "WHERE logicalrelid::text LIKE 'docs_%'").fetchall())
    assert rows == {"docs_by_id": "h", "docs_by_tenant": "h", "docs_ref": "n"}
    shards = cluster.execute("SELECT count(DISTINCT nodeport) FROM citus_shards "
                             "WHERE table_name = 'docs_by_id'::regclass").fetchone()[0]
    assert shards == 2


@pytest.mark.parametrize("search", [dict(), dict(gamma_search="reference"),
                                    dict(method="nudge_m"), dict(gamma=0.2)],
                         ids=["best", "reference", "nudge_m", "fixed"])
def test_dry_run_equals_single_node(cluster, search):
    local = fit(cluster, "docs_local", dry_run=True, **search)
    for t in ("docs_by_id", "docs_by_tenant", "docs_ref"):
        got = fit(cluster, t, dry_run=True, **search)
        for k in FIT[1:]:
            assert got[k] == pytest.approx(local[k], abs=1e-12), (t, k)


def test_evaluate_equals_single_node(cluster):
    q = "SELECT queries, ndcg, recall, capped_recall, mrr FROM nudge_evaluate(%s::regclass, 'embedding', 'q_test', 'r_test')"
    local = cluster.execute(q, ("docs_local",)).fetchone()
    for t in ("docs_by_id", "docs_by_tenant", "docs_ref"):
        assert cluster.execute(q, (t,)).fetchone() == pytest.approx(local, abs=1e-12), t


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant", "docs_ref"])
def test_applied_fit_revert_refit(cluster, table):
    """In place: same gamma, records and vectors as the plain table; revert restores every
    vector bit for bit; a refit starts from the originals and gives the same result again."""
    conn = cluster
    original = vectors(conn, table)
    local = fit(conn, "docs_local")
    local_vectors = vectors(conn, "docs_local")
    got = fit(conn, table)
    for k in FIT[1:]:
        assert got[k] == pytest.approx(local[k], abs=1e-12), k
    fitted = vectors(conn, table)
    assert_same_vectors(fitted, local_vectors)
    assert sum(not np.array_equal(fitted[k], original[k]) for k in original) == got["records_changed"]

    refit = dict(zip(FIT, conn.execute(f"SELECT {', '.join(FIT)} FROM nudge_refit(%s)",
                                       (got["fit_id"],)).fetchone()))
    assert refit["gamma"] == got["gamma"] and refit["records_changed"] == got["records_changed"]
    assert_same_vectors(vectors(conn, table), local_vectors)

    assert conn.execute("SELECT nudge_revert(%s)", (refit["fit_id"],)).fetchone()[0] == got["records_changed"]
    conn.execute("SELECT nudge_revert(%s)", (got["fit_id"],))
    reverted = vectors(conn, table)
    assert all(np.array_equal(reverted[k], original[k]) for k in original)
    conn.execute("SELECT nudge_revert(%s)", (local["fit_id"],))


def shard_updates(conn, table, run):
    """Run `run()` with citus.log_remote_commands on: the shard of each UPDATE of `table`'s
    shards the coordinator sent (one entry per task), and what `run` returned."""
    import re
    notices = []
    handler = lambda d: notices.append(d.message_primary)  # noqa: E731
    level = conn.execute("SHOW client_min_messages").fetchone()[0]
    conn.add_notice_handler(handler)
    conn.execute("SET citus.log_remote_commands = on")
    conn.execute("SET client_min_messages = notice")
    try:
        result = run()
    finally:
        conn.execute(f"SET client_min_messages = {level}")
        conn.execute("RESET citus.log_remote_commands")
        conn.remove_notice_handler(handler)
    pattern = re.compile(rf"\bUPDATE public\.{table}_(\d+) ")
    return [int(m) for n in notices if n.startswith("issuing ") for m in pattern.findall(n)], result


def shards_of(conn, table, fit_id):
    """The shards holding the rows fit `fit_id` backed up (the rows it wrote)."""
    key = "tenant" if table == "docs_by_tenant" else "id"
    return sorted(r for (r,) in conn.execute(
        f"SELECT DISTINCT get_shard_id_for_distribution_column('{table}', t.{key}) FROM {table} AS t "
        "WHERE t.id IN (SELECT row_id FROM nudge.fit_backups WHERE fit_id = %s)", (fit_id,)))


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant"])
def test_writes_are_routed_to_one_shard(cluster, table):
    """The write phase of a fit, of its revert and of a staged fit's nudge_apply sends each
    statement to one shard: one UPDATE task per shard holding rows to write (SciFact's rows to
    write fit in one batch per shard; docs_by_tenant's 7 tenants live in at most 7 of the 32
    shards, where an unrouted statement has a task on every shard), and the vectors are the
    one-node fit's."""
    conn = cluster
    before = table_md5(conn, table)
    local = fit(conn, "docs_local")
    nudged_local = vectors(conn, "docs_local")
    conn.execute("SELECT nudge_revert(%s)", (local["fit_id"],))
    total = conn.execute(f"SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = '{table}'::regclass").fetchone()[0]

    tasks, got = shard_updates(conn, table, lambda: fit(conn, table))
    shards = shards_of(conn, table, got["fit_id"])
    assert sorted(tasks) == shards, (tasks, shards)
    assert got["records_changed"] == local["records_changed"]
    assert_same_vectors(vectors(conn, table), nudged_local)
    if table == "docs_by_tenant":
        assert len(shards) <= 7 < total

    tasks, restored = shard_updates(conn, table, lambda: conn.execute(
        "SELECT nudge_revert(%s)", (got["fit_id"],)).fetchone()[0])
    assert restored == got["records_changed"] and sorted(tasks) == shards, (tasks, shards)
    assert table_md5(conn, table) == before

    staged = fit(conn, table, staged=True)
    # each step writes the next 100 staged rows in row id order: one task per shard among them
    per_step = conn.execute(
        "SELECT count(*), sum(n) FROM (SELECT count(DISTINCT shard) AS n FROM ("
        f"  SELECT (row_number() OVER (ORDER BY s.row_id) - 1) / 100 AS step, "
        f"         get_shard_id_for_distribution_column('{table}', coalesce(s.dist, s.row_id)) AS shard "
        "    FROM nudge.fit_staged AS s WHERE s.fit_id = %s) AS r GROUP BY step) AS g",
        (staged["fit_id"],)).fetchone()
    tasks, _ = shard_updates(conn, table, lambda: conn.execute(
        f"CALL nudge_apply({staged['fit_id']}, batch_rows => 100)"))
    assert set(tasks) == set(shards) and len(tasks) == per_step[1] < per_step[0] * total, (len(tasks), per_step)
    assert_same_vectors(vectors(conn, table), nudged_local)
    conn.execute("SELECT nudge_revert(%s)", (staged["fit_id"],))
    assert table_md5(conn, table) == before


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant"])
def test_target_column(cluster, table):
    conn = cluster
    local = fit(conn, "docs_local", target="nudged", gamma=0.2)
    got = fit(conn, table, target="nudged", gamma=0.2)
    assert got["records_changed"] == local["records_changed"]
    assert_same_vectors(vectors(conn, table, "nudged"), vectors(conn, "docs_local", "nudged"))
    exact = vectors(conn, table)
    assert all(np.array_equal(v, exact[k]) for k, v in vectors(conn, "docs_local").items())


def test_worker_down_changes_nothing(cluster):
    """A fit that cannot reach a worker fails with a connection error and writes nothing."""
    import psycopg
    datadir = os.path.join(os.environ["CITUS_DIR"], "worker2")
    bindir = os.environ["CITUS_BINDIR"]
    before = vectors(cluster, "docs_by_id")
    fits = cluster.execute("SELECT count(*) FROM nudge.fits").fetchone()[0]
    pg_ctl = [f"{bindir}/pg_ctl", "-D", datadir, "-w", "-t", "60"]
    if os.getuid() == 0:
        pg_ctl = ["runuser", "-u", os.environ.get("NUDGE_PG_USER", "postgres"), "--"] + pg_ctl
    subprocess.run(pg_ctl + ["-m", "fast", "stop"], check=True, capture_output=True)
    try:
        with pytest.raises(psycopg.Error) as e:
            fit(cluster, "docs_by_id")
        # (Citus raises it: 08006 on a new connection, XX000 on one it had cached)
        assert e.value.sqlstate in ("08006", "XX000"), e.value
        assert "127.0.0.1:" in str(e.value)
    finally:
        subprocess.run(pg_ctl + ["-l", f"{datadir}/server.log", "start"], check=True, capture_output=True)
    assert cluster.execute("SELECT count(*) FROM nudge.fits").fetchone()[0] == fits
    after = vectors(cluster, "docs_by_id")
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_duplicate_id_across_tenants_is_refused(cluster):
    """Distributed by tenant, the same labelled id in two shards: 23505, nothing changed."""
    import psycopg
    conn = cluster
    did = conn.execute("SELECT doc_id FROM r_train LIMIT 1").fetchone()[0]
    conn.execute("INSERT INTO docs_by_tenant (id, tenant, embedding) "
                 "SELECT id, tenant + 100, embedding FROM docs_by_tenant WHERE id = %s", (did,))
    try:
        before = table_md5(conn, "docs_by_tenant")
        with pytest.raises(psycopg.Error) as e:
            fit(conn, "docs_by_tenant")
        assert e.value.sqlstate == "23505", e.value
        assert "appears more than once" in str(e.value)
        assert table_md5(conn, "docs_by_tenant") == before
    finally:
        conn.execute("DELETE FROM docs_by_tenant WHERE id = %s AND tenant >= 100", (did,))


def test_pass_runs_on_the_shards(cluster, ref):
    """The pass is pushed down (32 shards answer; far fewer bytes than the corpus reach the
    coordinator) and gives what reading every row on the coordinator gives."""
    notices = []

    def keep(d):
        notices.append(d.message_primary)

    cluster.add_notice_handler(keep)
    try:
        cluster.execute("SET client_min_messages = debug1")
        pushed = fit(cluster, "docs_by_id", dry_run=True)
        cluster.execute("SET client_min_messages = warning")
    finally:
        cluster.execute("RESET client_min_messages")
        cluster.remove_notice_handler(keep)
    answered = [m for m in notices if m.endswith("for the shards of public.docs_by_id")]
    assert len(answered) == 1 and answered[0].startswith("nudge_fit: 2 workers answered"), notices
    corpus_bytes = ref.ds.docs.nbytes
    assert int(answered[0].split()[4]) < corpus_bytes / 4
    cluster.execute("SET nudge.citus_pushdown = off")
    try:
        pulled = fit(cluster, "docs_by_id", dry_run=True)
    finally:
        cluster.execute("RESET nudge.citus_pushdown")
    for k in FIT[1:]:
        assert pushed[k] == pytest.approx(pulled[k], abs=1e-12), k


def test_shard_error_keeps_its_sqlstate(cluster):
    """Bad data found on a worker is raised on the coordinator with its SQLSTATE; nothing changes."""
    import psycopg
    rid = cluster.execute("SELECT id FROM docs_by_id WHERE id NOT IN (SELECT doc_id FROM r_train) "
                          "ORDER BY id LIMIT 1").fetchone()[0]
    saved = cluster.execute("SELECT embedding::text FROM docs_by_id WHERE id = %s", (rid,)).fetchone()[0]
    cluster.execute(f"UPDATE docs_by_id SET embedding = array_fill(0, ARRAY[{DIM}])::vector WHERE id = %s", (rid,))
    try:
        before = table_md5(cluster, "docs_by_id")
        with pytest.raises(psycopg.Error) as e:
            fit(cluster, "docs_by_id")
        assert e.value.sqlstate == "22000", e.value
        assert f'row "{rid}"' in str(e.value) and "zero vector" in str(e.value)
        assert table_md5(cluster, "docs_by_id") == before
    finally:
        cluster.execute("UPDATE docs_by_id SET embedding = %s::vector WHERE id = %s", (saved, rid))


def test_privileges_as_on_one_node(cluster):
    """A role with SELECT only can dry-run but not write (42501), on the shards as on one node;
    a role without SELECT cannot even read (42501)."""
    import psycopg
    conn = cluster
    for role in ("nudge_citus_reader", "nudge_citus_nobody"):
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN")  # Citus connects to the workers as the role
        conn.execute(f"GRANT SELECT ON q_train, r_train, q_val, r_val TO {role}")
    conn.execute("GRANT SELECT ON docs_by_id TO nudge_citus_reader")
    before = table_md5(conn, "docs_by_id")
    try:
        conn.execute("SET ROLE nudge_citus_reader")
        assert fit(conn, "docs_by_id", dry_run=True)["records_changed"] == 553
        with pytest.raises(psycopg.Error) as e:
            fit(conn, "docs_by_id")
        assert e.value.sqlstate == "42501", e.value
        conn.execute("SET ROLE nudge_citus_nobody")
        with pytest.raises(psycopg.Error) as e:
            fit(conn, "docs_by_id", dry_run=True)
        assert e.value.sqlstate == "42501", e.value
    finally:
        conn.execute("RESET ROLE")
    assert table_md5(conn, "docs_by_id") == before


@pytest.mark.parametrize("change", ["another version", "missing"])
def test_worker_without_this_nudge(cluster, change):
    """A worker whose nudge is of another version (or absent) is named in a 55000 error before
    any shard runs; nothing changes. (Simulated by editing pg_extension on the worker.)"""
    import psycopg
    worker = psycopg.connect(host="127.0.0.1", port=int(os.environ["CITUS_WORKER1_PORT"]), user="postgres",
                             dbname=DB, autocommit=True)
    edit, undo = {
        "another version": ("UPDATE pg_extension SET extversion = '0.0.9' WHERE extname = 'nudge'",
                            "UPDATE pg_extension SET extversion = %s WHERE extname = 'nudge'"),
        "missing": ("UPDATE pg_extension SET extname = 'nudge_gone' WHERE extname = 'nudge'",
                    "UPDATE pg_extension SET extname = 'nudge' WHERE extname = 'nudge_gone' AND %s::text IS NOT NULL"),
    }[change]
    version = worker.execute("SELECT extversion FROM pg_extension WHERE extname = 'nudge'").fetchone()[0]
    before = table_md5(cluster, "docs_by_id")
    worker.execute(edit)
    try:
        with pytest.raises(psycopg.Error) as e:
            fit(cluster, "docs_by_id")
        assert e.value.sqlstate == "55000", e.value
        assert ("has nudge 0.0.9" if change == "another version" else "does not have nudge") in str(e.value)
    finally:
        worker.execute(undo, (version,))
        worker.close()
    assert table_md5(cluster, "docs_by_id") == before


def test_worker_stopped_during_the_write(cluster):
    """A worker stopped while the fit writes (the fit waits on a row another session locked on
    that worker, so some shards are already written): the fit fails and no shard changed."""
    import threading

    import psycopg
    conn = cluster
    bindir, datadir = os.environ["CITUS_BINDIR"], os.path.join(os.environ["CITUS_DIR"], "worker2")
    import re
    port2 = int(re.findall(r"^port = (\d+)$", open(os.path.join(datadir, "postgresql.conf")).read(), re.M)[-1])
    victim = conn.execute(
        "SELECT r.doc_id FROM r_train r JOIN citus_shards s "
        "ON s.shardid = get_shard_id_for_distribution_column('docs_by_id', r.doc_id) "
        "WHERE s.table_name = 'docs_by_id'::regclass AND s.nodeport = %s LIMIT 1", (port2,)).fetchone()[0]
    before, fits = table_md5(conn, "docs_by_id"), conn.execute("SELECT count(*) FROM nudge.fits").fetchone()[0]
    holder = connect()
    holder.autocommit = False
    holder.execute("SELECT 1 FROM docs_by_id WHERE id = %s FOR UPDATE", (victim,))
    outcome = {}

    def run_fit():
        try:
            with connect() as c:
                outcome["row"] = fit(c, "docs_by_id")
        except psycopg.Error as e:
            outcome["error"] = e

    t = threading.Thread(target=run_fit)
    t.start()
    pg_ctl = [f"{bindir}/pg_ctl", "-D", datadir, "-w", "-t", "60"]
    if os.getuid() == 0:
        pg_ctl = ["runuser", "-u", os.environ.get("NUDGE_PG_USER", "postgres"), "--"] + pg_ctl
    try:
        with psycopg.connect(host="127.0.0.1", port=port2, user="postgres", dbname=DB, autocommit=True) as w:
            for _ in range(600):   # until the fit's update waits for the locked row on worker2
                if w.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND query LIKE '%%UPDATE public.docs_by_id%%'").fetchone()[0]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the fit never waited on worker2")
        subprocess.run(pg_ctl + ["-m", "fast", "stop"], check=True, capture_output=True)
        t.join(120)
    finally:
        subprocess.run(pg_ctl + ["-l", f"{datadir}/server.log", "start"], check=True, capture_output=True)
        try:
            holder.close()
        except psycopg.Error:
            pass
    assert "error" in outcome, outcome
    assert table_md5(conn, "docs_by_id") == before
    assert conn.execute("SELECT count(*) FROM nudge.fits").fetchone()[0] == fits


def test_a_transaction_sees_its_own_fit(cluster):
    """After a fit in the same transaction, nudge_evaluate (and a second fit) read the rows on
    the coordinator, where the transaction's writes are visible, not on the workers."""
    q = "SELECT ndcg FROM nudge_evaluate(%s::regclass, 'embedding', 'q_test', 'r_test')"
    before = cluster.execute(q, ("docs_by_id",)).fetchone()[0]
    with cluster.transaction(force_rollback=True):
        fit(cluster, "docs_local", gamma=0.2)
        fit(cluster, "docs_by_id", gamma=0.2)
        local, citus = (cluster.execute(q, (t,)).fetchone()[0] for t in ("docs_local", "docs_by_id"))
        assert citus == pytest.approx(local, abs=1e-12) and citus > before + 0.05


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant"])
def test_online_fit_keeps_application_writes(cluster, table):
    """An online fit (the default) held before its write (another session holds SHARE on
    nudge.fit_backups, which the write needs): the application's writes through the
    distributed table go on with lock_timeout = '1s'; the fit then skips the moved rows whose
    embedding the application changed or deleted (compared by digest), but not a row where only
    another column changed; revert leaves the application's values."""
    import threading

    import psycopg
    conn = cluster
    before = table_md5(conn, table)
    # rows this fit moves: those the same fit writes on the plain table
    local_fit = fit(conn, "docs_local")["fit_id"]
    moved = [r for (r,) in conn.execute("SELECT row_id FROM nudge.fit_backups WHERE fit_id = %s ORDER BY row_id LIMIT 3",
                                        (local_fit,))]
    nudged_local = vectors(conn, "docs_local")
    conn.execute("SELECT nudge_revert(%s)", (local_fit,))
    changed, other_column, deleted = moved
    saved = conn.execute(f"SELECT id, tenant, embedding::text, nudged::text FROM {table} WHERE id = ANY(%s)",
                         (moved,)).fetchall()
    app_vec = vec_text(np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32))

    holder = connect()
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE nudge.fit_backups IN SHARE MODE")
    outcome = {}

    def run_fit():
        try:
            with connect() as c:
                c.add_notice_handler(lambda d: outcome.setdefault("notices", []).append(d.message_primary))
                outcome["row"] = c.execute(
                    f"SELECT fit_id, records_changed, rows_skipped FROM nudge_fit('{table}', 'embedding', 'q_train', "
                    "'r_train', validation_queries => 'q_val', validation_qrels => 'r_val')").fetchone()
        except psycopg.Error as e:
            outcome["error"] = e

    t = threading.Thread(target=run_fit)
    t.start()
    try:
        for _ in range(1200):
            if conn.execute("SELECT count(*) FROM pg_locks WHERE relation = 'nudge.fit_backups'::regclass "
                            "AND NOT granted").fetchone()[0]:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the fit never waited for nudge.fit_backups")
        with connect() as app:
            app.execute("SET lock_timeout = '1s'")
            app.execute(f"UPDATE {table} SET embedding = %s WHERE id = %s", (app_vec, changed))
            app.execute(f"UPDATE {table} SET nudged = embedding WHERE id = %s", (other_column,))
            app.execute(f"DELETE FROM {table} WHERE id = %s", (deleted,))
            app.execute(f"INSERT INTO {table} (id, tenant, embedding) VALUES ('app-new', 1, %s)", (app_vec,))
    finally:
        holder.execute("COMMIT")
        holder.close()
        t.join(300)
    try:
        assert "error" not in outcome, outcome
        fit_id, records_changed, skipped = outcome["row"]
        assert skipped == 2
        assert any("2 of " in m and "left as they are" in m for m in outcome["notices"]), outcome["notices"]
        assert conn.execute("SELECT rows_written, rows_skipped, lock FROM nudge.fits WHERE fit_id = %s",
                            (fit_id,)).fetchone()[1:] == (2, "rows")
        got = vectors(conn, table)
        assert np.array_equal(got[changed], parse_vec(app_vec)) and deleted not in got and "app-new" in got
        # the row whose other column changed is nudged as on one node
        assert float(np.max(np.abs(got[other_column] - nudged_local[other_column]))) <= VECTOR_TOL
        assert conn.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0] == \
            conn.execute("SELECT rows_written FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone()[0]
        assert np.array_equal(vectors(conn, table)[changed], parse_vec(app_vec))
    finally:
        # the table as it was, for the other tests
        conn.execute(f"DELETE FROM {table} WHERE id = ANY(%s) OR id = 'app-new'", (moved,))
        conn.cursor().executemany(f"INSERT INTO {table} (id, tenant, embedding, nudged) VALUES (%s, %s, %s, %s)", saved)
        assert table_md5(conn, table) == before


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant"])
def test_staged_fit_applied_in_batches(cluster, table):
    """A staged fit of a distributed table, applied by nudge_apply in batches of 50 rows (each
    committed through the coordinator): the rows equal the one-node fit's, a moved row whose
    embedding the application changed after staging is skipped, revert restores the rest."""
    conn = cluster
    before = table_md5(conn, table)
    local_fit = fit(conn, "docs_local")["fit_id"]
    nudged_local = vectors(conn, "docs_local")
    moved = [r for (r,) in conn.execute("SELECT row_id FROM nudge.fit_backups WHERE fit_id = %s ORDER BY row_id LIMIT 1",
                                        (local_fit,))]
    conn.execute("SELECT nudge_revert(%s)", (local_fit,))
    saved = conn.execute(f"SELECT id, tenant, embedding::text, nudged::text FROM {table} WHERE id = ANY(%s)",
                         (moved,)).fetchall()
    app_vec = vec_text(np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32))
    try:
        staged = fit(conn, table, staged=True)
        fit_id, n = staged["fit_id"], staged["records_changed"]
        assert conn.execute("SELECT status, rows_written FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone() == ("staged", 0)
        assert table_md5(conn, table) == before
        conn.execute(f"UPDATE {table} SET embedding = %s WHERE id = %s", (app_vec, moved[0]))
        assert conn.execute(f"CALL nudge_apply({fit_id}, batch_rows => 50)").fetchone() == (n - 1, 1)
        got = vectors(conn, table)
        assert np.array_equal(got[moved[0]], parse_vec(app_vec))
        del got[moved[0]]
        assert_same_vectors(got, {k: v for k, v in nudged_local.items() if k != moved[0]})
        assert conn.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0] == n - 1
        assert np.array_equal(vectors(conn, table)[moved[0]], parse_vec(app_vec))
    finally:
        conn.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", (moved,))
        conn.cursor().executemany(f"INSERT INTO {table} (id, tenant, embedding, nudged) VALUES (%s, %s, %s, %s)", saved)
        assert table_md5(conn, table) == before


@pytest.mark.parametrize("table", ["docs_by_id", "docs_by_tenant"])
def test_guarded_refit(cluster, table):
    """A guarded refit of a distributed table: the guard's numbers are those of the plain
    table, equal nudge_evaluate before and after the write, and a rejection writes nothing."""
    conn = cluster
    ev = "SELECT ndcg FROM nudge_evaluate(%s::regclass, 'embedding', 'q_test', 'r_test')"
    conn.execute("DROP TABLE IF EXISTS r_grow")
    conn.execute("CREATE TABLE r_grow AS SELECT * FROM r_train WHERE query_id IN "
                 "(SELECT id FROM q_train ORDER BY id LIMIT 300)")
    refit = ("SELECT status, guard_before, guard_after, fit_id FROM nudge_refit(%s, "
             "guard_queries => 'q_test', guard_qrels => 'r_test', guard_tolerance => %s)")
    got = {}
    for t in ("docs_local", table):
        first = conn.execute("SELECT fit_id FROM nudge_fit(%s::regclass, 'embedding', 'q_train', 'r_grow')",
                             (t,)).fetchone()[0]
        now = conn.execute(ev, (t,)).fetchone()[0]
        before_md5 = table_md5(conn, t)
        # tolerance -1: only a gain of 1 would do, so it is rejected and nothing is written
        status, before, after, rejected = conn.execute(refit, (first, -1.0)).fetchone()
        assert status == "rejected" and before == pytest.approx(now, abs=1e-12)
        assert table_md5(conn, t) == before_md5
        assert conn.execute("SELECT status, rows_written FROM nudge.fits WHERE fit_id = %s",
                            (rejected,)).fetchone() == ("rejected", 0)
        conn.execute("INSERT INTO r_grow SELECT * FROM r_train EXCEPT SELECT * FROM r_grow")
        status, before, after, refit_id = conn.execute(refit, (first, 1.0)).fetchone()
        assert status == "applied" and before == pytest.approx(now, abs=1e-12) and after != before
        assert conn.execute(ev, (t,)).fetchone()[0] == pytest.approx(after, abs=1e-12)
        got[t] = (before, after)
        conn.execute("SELECT nudge_revert(%s)", (refit_id,))
        conn.execute("SELECT nudge_revert(%s)", (first,))
        conn.execute("DELETE FROM r_grow WHERE query_id NOT IN (SELECT id FROM q_train ORDER BY id LIMIT 300)")
    assert got[table] == pytest.approx(got["docs_local"], abs=1e-12)


@pytest.fixture(scope="module")
def tenants(cluster, ref):
    """SciFact with a tenant per document and query such that no label crosses tenants (the
    components of the label graph, dealt to 5 tenants): a plain table, one distributed by
    tenant and one by id, and the paper split's queries with their tenant."""
    import test_partition
    doc_t, query_t = test_partition._tenants(ref.ds)
    conn = cluster
    for t in ("pdocs_local", "pdocs_by_tenant", "pdocs_by_id", "pq_train", "pq_val"):
        conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
    for t in ("pdocs_local", "pdocs_by_tenant", "pdocs_by_id"):
        conn.execute(f"CREATE TABLE {t} (id text, tenant text NOT NULL, embedding vector({DIM}), "
                     f"nudged vector({DIM}), PRIMARY KEY (tenant, id))")
        with conn.cursor() as cur, cur.copy(f"COPY {t} (id, tenant, embedding) FROM STDIN") as cp:
            for did, row in zip(ref.ds.doc_ids, ref.ds.docs):
                cp.write_row((did, f"t{doc_t[did]}", vec_text(row)))
    conn.execute("SELECT create_distributed_table('pdocs_by_tenant', 'tenant')")
    conn.execute("SELECT create_distributed_table('pdocs_by_id', 'id')")
    for name in ("train", "val"):
        conn.execute(f"CREATE TABLE pq_{name} AS SELECT q.*, NULL::text AS tenant FROM q_{name} q")
        with conn.cursor() as cur:
            cur.executemany(f"UPDATE pq_{name} SET tenant = %s WHERE id = %s",
                            [(f"t{query_t[q]}", q) for q in (ref.train if name == "train" else ref.val)])
    conn.execute("ANALYZE")
    return conn


def pfit(conn, table, **kw):
    args = dict(validation_queries="pq_val", validation_qrels="r_val", partition="tenant", **kw)
    named = "".join(f", {k} => %({k})s" for k in args)
    row = conn.execute(f"SELECT {', '.join(FIT)} FROM nudge_fit(%(t)s::regclass, 'embedding', "
                       f"'pq_train', 'r_train'{named})", dict(t=table, **args)).fetchone()
    return dict(zip(FIT, row))


@pytest.mark.parametrize("per_partition", [False, True])
def test_partitioned_fit_is_pushed_down(tenants, per_partition):
    """partition => on a table distributed by the partition column: the pass runs on the
    workers (2 answer) and gives the single-node fit (gamma, validation 1e-12, vectors 1e-6),
    as reading every row on the coordinator does."""
    conn = tenants
    notices = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary))
    try:
        conn.execute("SET client_min_messages = debug1")
        pushed = pfit(conn, "pdocs_by_tenant", target="nudged", gamma_per_partition=per_partition)
    finally:
        conn.execute("RESET client_min_messages")
    assert any(m.startswith("nudge_fit: 2 workers answered") for m in notices), notices
    single = pfit(conn, "pdocs_local", target="nudged", gamma_per_partition=per_partition)
    conn.execute("SET nudge.citus_pushdown = off")
    try:
        pulled = pfit(conn, "pdocs_by_tenant", dry_run=True, gamma_per_partition=per_partition)
    finally:
        conn.execute("RESET nudge.citus_pushdown")
    for k in FIT[1:]:
        assert pushed[k] == pytest.approx(single[k], abs=1e-12), k
        assert pulled[k] == pytest.approx(single[k], abs=1e-12), k
    assert_same_vectors(vectors(conn, "pdocs_by_tenant", "nudged"), vectors(conn, "pdocs_local", "nudged"))
    ev = [conn.execute(f"SELECT ndcg FROM nudge_evaluate('{t}', 'nudged', 'pq_val', 'r_val', partition => 'tenant')")
          .fetchone()[0] for t in ("pdocs_by_tenant", "pdocs_local")]
    assert ev[0] == pytest.approx(ev[1], abs=1e-12)


def test_partitioned_pushdown_refuses_crossing_labels(tenants):
    """A label crossing tenants, found by a worker's pass: 23514, nothing written."""
    import psycopg
    conn = tenants
    before = table_md5(conn, "pdocs_by_tenant")
    other = conn.execute("SELECT d.id FROM pdocs_by_tenant d, pq_train q WHERE q.id = (SELECT min(id) FROM pq_train) "
                         "AND d.tenant <> q.tenant LIMIT 1").fetchone()[0]
    conn.execute("CREATE TEMP TABLE r_cross AS SELECT * FROM r_train UNION ALL "
                 "SELECT (SELECT min(id) FROM pq_train), %s, 1", (other,))
    with pytest.raises(psycopg.Error) as e:
        conn.execute("SELECT * FROM nudge_fit('pdocs_by_tenant', 'embedding', 'pq_train', 'r_cross', "
                     "validation_queries => 'pq_val', validation_qrels => 'r_val', partition => 'tenant')")
    assert e.value.sqlstate == "23514" and "crosses partitions" in str(e.value)
    assert table_md5(conn, "pdocs_by_tenant") == before


PDOCS = ("pdocs_local", "pdocs_by_tenant", "pdocs_by_id")
EVAL = ("queries", "ndcg", "recall", "capped_recall", "mrr")


def evaluate_debug(conn, sql, args=(), notices=None):
    """Runs `sql` with DEBUG1 messages on; returns (its first row, the messages, also kept in
    `notices` if given)."""
    notices = [] if notices is None else notices

    def keep(d):
        notices.append(d.message_primary)

    conn.add_notice_handler(keep)
    try:
        conn.execute("SET client_min_messages = debug1")
        row = conn.execute(sql, args).fetchone()
    finally:
        conn.execute("RESET client_min_messages")
        conn.remove_notice_handler(keep)
    return row, notices


@pytest.fixture
def tenant_decoys(tenants):
    """Rows added to the three partitioned tables alike: for a few judged docs, copies of its
    vector in a tenant no query has (they would rank first for its queries if partitions
    leaked), in another query's tenant, and in its own tenant under ids just below and above
    its own (exact score ties, ordered by id as trec_eval orders them)."""
    conn = tenants
    rows = conn.execute(
        "SELECT d.id, d.tenant, d.embedding::text FROM pdocs_local d "
        "WHERE d.id IN (SELECT doc_id FROM r_val WHERE score > 0) ORDER BY d.id LIMIT 12").fetchall()
    other = {t for (t,) in conn.execute("SELECT DISTINCT tenant FROM pq_val")}
    added = []
    for did, tenant, emb in rows:
        elsewhere = sorted(other - {tenant})[0]
        below = did[:-1] + chr(ord(did[-1]) - 1) + "~"  # (SciFact ids are digits)
        added += [(f"zz-nobody-{did}", "nobody", emb), (f"zz-{did}", elsewhere, emb),
                  (below, tenant, emb), (f"{did}-", tenant, emb)]
    for t in PDOCS:
        with conn.cursor() as cur:
            cur.executemany(f"INSERT INTO {t} (id, tenant, embedding) VALUES (%s, %s, %s::vector)", added)
    yield conn
    for t in PDOCS:
        with conn.cursor() as cur:
            cur.executemany(f"DELETE FROM {t} WHERE id = %s AND tenant = %s", [(i, tn) for i, tn, _ in added])


@pytest.mark.parametrize("table", ["pdocs_by_tenant", "pdocs_by_id"])
@pytest.mark.parametrize("k", [10, 100])
def test_partitioned_evaluate_is_pushed_down(tenant_decoys, table, k):
    """nudge_evaluate(partition =>) on a table distributed by the partition column or by id:
    the k-NN runs on the workers (2 answer) and every metric equals the plain table's to
    1e-12, decoys (rows of a tenant no query has, copies in other tenants, exact score ties)
    included, and equals reading every row on the coordinator. Each query ranks only its own
    tenant's rows, so (no label crossing tenants) no metric is below the unpartitioned one."""
    conn = tenant_decoys
    q = ("SELECT queries, ndcg, recall, capped_recall, mrr FROM nudge_evaluate(%s::regclass, 'embedding', "
         "'pq_val', 'r_val', k => %s, partition => 'tenant')")
    pushed, notices = evaluate_debug(conn, q, (table, k))
    answered = [m for m in notices if m.startswith("nudge_evaluate: ")]
    assert len(answered) == 1 and answered[0].startswith("nudge_evaluate: 2 workers answered"), notices
    assert answered[0].endswith(f"for the shards of public.{table}")
    single, notices = evaluate_debug(conn, q, ("pdocs_local", k))
    assert not [m for m in notices if m.startswith("nudge_evaluate: ")], notices
    conn.execute("SET nudge.citus_pushdown = off")
    try:
        pulled, notices = evaluate_debug(conn, q, (table, k))
    finally:
        conn.execute("RESET nudge.citus_pushdown")
    assert not [m for m in notices if m.startswith("nudge_evaluate: ")], notices
    for name, a, b, c in zip(EVAL, pushed, single, pulled):
        assert a == pytest.approx(b, abs=1e-12), name
        assert c == pytest.approx(b, abs=1e-12), name
    unpartitioned = conn.execute(q.replace(", partition => 'tenant'", ""), (table, k)).fetchone()
    assert pushed[0] == unpartitioned[0]
    for name, a, u in zip(EVAL[1:], pushed[1:], unpartitioned[1:]):
        assert a >= u - 1e-12, name
    assert pushed[1] > unpartitioned[1]


@pytest.mark.parametrize("table", ["pdocs_by_tenant", "pdocs_by_id"])
def test_partitioned_evaluate_pushdown_refuses_crossing_labels(tenants, table):
    """A label crossing tenants, found from the partition values the workers send back: 23514
    naming the query and the doc, after the workers answered."""
    import psycopg
    conn = tenants
    query = conn.execute("SELECT min(id) FROM pq_val WHERE id IN (SELECT query_id FROM r_val)").fetchone()[0]
    other = conn.execute("SELECT d.id FROM pdocs_local d, pq_val q WHERE q.id = %s AND d.tenant <> q.tenant "
                         "ORDER BY d.id LIMIT 1", (query,)).fetchone()[0]
    conn.execute("DROP TABLE IF EXISTS r_cross_eval")
    conn.execute("CREATE TEMP TABLE r_cross_eval AS SELECT * FROM r_val UNION ALL SELECT %s, %s, 1", (query, other))
    try:
        notices = []
        with pytest.raises(psycopg.Error) as e:
            evaluate_debug(conn, "SELECT * FROM nudge_evaluate(%s::regclass, 'embedding', 'pq_val', "
                           "'r_cross_eval', partition => 'tenant')", (table,), notices)
        assert e.value.sqlstate == "23514", e.value
        assert any(m.startswith("nudge_evaluate: 2 workers answered") for m in notices), notices
        msg = str(e.value)
        assert "crosses partitions" in msg and f'query "{query}"' in msg and f'doc "{other}"' in msg, msg
        assert f"public.{table}" in msg, msg
        # the same label on the plain table: the same error
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT * FROM nudge_evaluate('pdocs_local', 'embedding', 'pq_val', "
                         "'r_cross_eval', partition => 'tenant')")
        assert e.value.sqlstate == "23514" and f'doc "{other}"' in str(e.value), e.value
    finally:
        conn.execute("DROP TABLE r_cross_eval")

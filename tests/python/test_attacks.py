"""Attacks (issue 17) where psycopg is handier than pg_regress (tests/regress/sql/nudge_attacks.sql
has the rest: real[] columns, three databases, every function with NULLs and garbage).

* pgvector columns (vector, halfvec, an HNSW index) under hostile objects planted BEFORE
  CREATE EXTENSION nudge, in public and in a schema first on the caller's search_path
  (functions, aggregates, operators, domains named like the types nudge casts to, catalog
  views, functions named like nudge's own, and the pgvector operators and type names), with
  nudge installed in a schema on nobody's path: every entry point, as a superuser and as the
  tables' owner; the marker table stays empty and no object of nudge depends on them.
* Roles in their own login sessions: someone else's staged fit cannot be applied or dropped,
  the catalog cannot be written, the internal functions cannot be called (42501).
* Requests to the internal shard functions that ask for terabytes, and a few hundred mutations
  of a valid request, on a private cluster (a crash there disturbs no other test): an answer
  or a clear error, never class XX, never a crash.
* On the Citus cluster (skipped without it, as test_citus.py): hostile objects on the
  coordinator and on every worker; fits, evaluations, staged fits and reverts of a distributed
  table as a superuser and as its owner; the marker tables of all nodes stay empty; the
  workers' shard functions are not PUBLIC's.

The hostile objects and helpers (chk.plant, chk.cycle, chk.marker, ...) are the regression
suite's, read from nudge_attacks.sql between its "-- BEGIN" and "-- END" lines.
"""
from __future__ import annotations

import os
import pathlib
import random
import re
import subprocess

import pytest

import pg_util

ROOT = pathlib.Path(__file__).resolve().parents[2]
REGRESS_SQL = ROOT / "tests" / "regress" / "sql" / "nudge_attacks.sql"
# guard queries and labels for chk.cycle's guarded refits (ids of their own, as in the suite)
GUARD_TABLES = """CREATE TABLE attack.gq AS SELECT id + 100 AS id, embedding FROM attack.q;
                  CREATE TABLE attack.gr AS SELECT query_id + 100 AS query_id, doc_id::text AS doc_id FROM attack.rv"""
DB = "nudge_attacks_py"
DIM = 8
ATTACKER, OWNER, WRITER, PLAIN = "nudge_py_attacker", "nudge_py_owner", "nudge_py_writer", "nudge_py_plain"
ROLES = (ATTACKER, OWNER, WRITER, PLAIN)
TIMEOUT = 120


def regress_block(name):
    """The SQL between "-- BEGIN <name>" and "-- END <name>" in nudge_attacks.sql."""
    text = REGRESS_SQL.read_text()
    m = re.search(rf"^-- BEGIN {name}\b.*?\n(.*?)^-- END {name}\b", text, re.S | re.M)
    assert m, f"no block {name} in {REGRESS_SQL}"
    return m.group(1)


# pgvector's operators and functions, and its type names as domains: in schema s, for the
# types of the vector extension in schema vs. Same conventions as chk.plant.
PLANT_VECTOR = r"""
CREATE FUNCTION chk.plant_vector(s name, vs name) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog AS $plant$
DECLARE
  n bigint := 0; k int := 0; t text; op text; res text; what text; fn text;
  log text := 'PERFORM pg_catalog.nextval(''public.attack_hits''::pg_catalog.regclass); '
              'INSERT INTO public.attack_marker VALUES (CURRENT_USER, %L); ';
BEGIN
  FOREACH t IN ARRAY ARRAY['vector', 'halfvec'] LOOP
    CONTINUE WHEN pg_catalog.to_regtype(pg_catalog.format('%I.%I', vs, t)) IS NULL;
    FOREACH op IN ARRAY ARRAY['=', '<>', '<', '>', '<=', '>=', '<->', '<#>', '<=>', '<+>', '+', '-', '*', '||'] LOOP
      BEGIN
        EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(NULL::%I.%I OPERATOR(%I.%s) NULL::%I.%I)::text',
                                  vs, t, vs, op, vs, t) INTO res;
      EXCEPTION WHEN OTHERS THEN
        CONTINUE;
      END;
      k := k + 1;
      what := pg_catalog.format('OPERATOR %I.%s (%s, %s)', s, op, t, t);
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE FUNCTION %I.attack_vop_%s(%I.%I, %I.%I) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
        || 'RETURN $1 OPERATOR(%I.%s) $2; END $f$', s, k, vs, t, vs, t, res, what, vs, op));
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE OPERATOR %I.%s (LEFTARG = %I.%I, RIGHTARG = %I.%I, FUNCTION = %I.attack_vop_%s)', s, op, vs, t, vs, t, s, k));
    END LOOP;
    FOREACH fn IN ARRAY ARRAY['vector_dims', 'vector_norm', 'l2_norm', 'l2_normalize'] LOOP
      BEGIN
        EXECUTE pg_catalog.format('SELECT pg_catalog.pg_typeof(%I.%I(NULL::%I.%I))::text', vs, fn, vs, t) INTO res;
      EXCEPTION WHEN OTHERS THEN
        CONTINUE;
      END;
      what := pg_catalog.format('%I.%I(%s)', s, fn, t);
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE FUNCTION %I.%I(%I.%I) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN ' || log
        || 'RETURN %I.%I($1); END $f$', s, fn, vs, t, res, what, vs, fn));
    END LOOP;
    FOREACH fn IN ARRAY ARRAY['cosine_distance', 'inner_product', 'l2_distance'] LOOP
      what := pg_catalog.format('%I.%I(%s, %s)', s, fn, t, t);
      n := n + chk.plant_one(pg_catalog.format(
        'CREATE FUNCTION %I.%I(%I.%I, %I.%I) RETURNS double precision LANGUAGE plpgsql AS $f$ BEGIN ' || log
        || 'RETURN %I.%I($1, $2); END $f$', s, fn, vs, t, vs, t, what, vs, fn));
    END LOOP;
    -- the type name itself, as a domain (a cast to vector(384) then fails: no typmod on a domain)
    what := pg_catalog.format('domain %I.%I', s, t);
    n := n + chk.plant_one(pg_catalog.format(
      'CREATE FUNCTION %I.attack_domain_%s(%I.%I) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN ' || log
      || 'RETURN true; END $f$', s, t, vs, t, what));
    n := n + chk.plant_one(pg_catalog.format('CREATE DOMAIN %I.%I AS %I.%I CHECK (%I.attack_domain_%s(VALUE))',
                                             s, t, vs, t, s, t));
  END LOOP;
  RETURN n;
END
$plant$;
"""

CORPORA = (("attack.dv", "attack.rv"), ("attack.dh", "attack.rh"))


def _psycopg():
    import psycopg
    return psycopg


def connect(dbname=DB, **kw):
    return _psycopg().connect(dbname=dbname, autocommit=True, connect_timeout=10, **kw)


def marker(conn):
    return conn.execute("SELECT chk.marker()").fetchone()[0]


def sqlstate_of(conn, sql, params=None):
    """The SQLSTATE `sql` raised, or None."""
    try:
        conn.execute(sql, params)
    except _psycopg().Error as e:
        return e.sqlstate
    return None


@pytest.fixture(scope="module")
def atk(db):
    """A database where the attacker planted everything before nudge was installed (in
    other_schema, on nobody's path; pgvector in public), and the owner's vector and halfvec
    corpora. Roles log in (trust authentication, as scripts/pg.sh sets up)."""
    admin = connect(db.info.dbname)
    if admin.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'").fetchone()[0] == 0:
        pytest.skip("pgvector is not available on this server")
    admin.execute("SET client_min_messages = warning")
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    for r in ROLES:
        admin.execute(f"DROP ROLE IF EXISTS {r}")
    for r in ROLES:
        admin.execute(f"CREATE ROLE {r} LOGIN")
    admin.execute(f"CREATE DATABASE {DB}")
    c = connect()
    c.execute("SET client_min_messages = warning")
    c.execute("CREATE EXTENSION vector")
    halfvec = c.execute("SELECT to_regtype('halfvec') IS NOT NULL").fetchone()[0]
    c.execute("CREATE TABLE public.attack_marker (who text, what text)")
    c.execute("GRANT SELECT, INSERT ON public.attack_marker TO PUBLIC")
    c.execute("CREATE SEQUENCE public.attack_hits")
    c.execute("GRANT USAGE ON SEQUENCE public.attack_hits TO PUBLIC")
    c.execute(f"GRANT CREATE ON SCHEMA public TO {ATTACKER}")
    c.execute(f"CREATE SCHEMA evil AUTHORIZATION {ATTACKER}")
    c.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
    c.execute("CREATE SCHEMA chk")
    c.execute("GRANT USAGE ON SCHEMA chk TO PUBLIC")
    c.execute(regress_block("plant"))
    c.execute(PLANT_VECTOR)
    c.execute(regress_block("helpers"))
    c.execute(f"CREATE SCHEMA attack AUTHORIZATION {OWNER}")
    c.execute("GRANT USAGE ON SCHEMA attack TO PUBLIC")
    c.execute(f"SET ROLE {OWNER}")
    c.execute(f"""CREATE TABLE attack.q AS
        SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                                FROM generate_series(1, {DIM}) j)::vector({DIM}) AS embedding
          FROM generate_series(1, 12) k""")
    c.execute(f"""CREATE TABLE attack.dv (id integer PRIMARY KEY, embedding vector({DIM}), nudged vector({DIM}))""")
    c.execute(f"""INSERT INTO attack.dv SELECT i, ARRAY(SELECT sin(i * j * 0.41 + j)::real FROM generate_series(1, {DIM}) j)
                    FROM generate_series(1, 40) i""")
    c.execute("CREATE INDEX ON attack.dv USING hnsw (embedding vector_cosine_ops)")
    c.execute("CREATE TABLE attack.rv AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k")
    c.execute(GUARD_TABLES)
    if halfvec:
        c.execute(f"""CREATE TABLE attack.dh (id text PRIMARY KEY, embedding halfvec({DIM}), nudged halfvec({DIM}))""")
        c.execute(f"INSERT INTO attack.dh SELECT 'doc ' || id, embedding::halfvec({DIM}) FROM attack.dv")
        c.execute("CREATE TABLE attack.rh AS SELECT query_id, 'doc ' || doc_id AS doc_id FROM attack.rv")
    c.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA attack TO {WRITER}")
    c.execute(f"GRANT UPDATE ON attack.dv TO {WRITER}")
    c.execute("RESET ROLE")
    corpora = [(d, r) for d, r in CORPORA if halfvec or d != "attack.dh"]
    for d, _ in corpora:
        c.execute("INSERT INTO chk.originals VALUES (%s::regclass, chk.emb_fp(%s::regclass))", (d, d))
    # the attacker plants, then the superuser installs nudge in a schema on nobody's path
    c.execute(f"SET ROLE {ATTACKER}")
    planted = c.execute("SELECT chk.plant('public', true) + chk.plant('evil', true) "
                        "+ chk.plant_vector('evil', 'public')").fetchone()[0]
    c.execute("RESET ROLE")
    assert planted > 2000
    c.execute("CREATE SCHEMA other_schema")
    c.execute("GRANT USAGE ON SCHEMA other_schema TO PUBLIC")
    c.execute("SET search_path = evil, public, pg_catalog")
    c.execute("CREATE EXTENSION nudge SCHEMA other_schema")
    c.execute("RESET search_path")
    c.execute("SET nudge.progress = on")
    c.execute("SET nudge.progress_interval = 0")
    yield c, corpora
    c.close()
    admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    for r in ROLES:
        admin.execute(f"DROP ROLE IF EXISTS {r}")
    admin.close()


def test_no_dependency_on_hostile_objects(atk):
    c, _ = atk
    assert c.execute("SELECT * FROM chk.foreign_deps()").fetchall() == []
    assert c.execute("SELECT * FROM chk.function_rules()").fetchall() == []
    assert marker(c) == "marker rows: 0, hostile calls: 0"


@pytest.mark.parametrize("path", ['"$user", public', "evil, public, pg_catalog"], ids=["public", "evil_first"])
@pytest.mark.parametrize("role", [None, OWNER], ids=["superuser", "owner"])
def test_entry_points_run_no_hostile_object(atk, path, role):
    """Every entry point on vector and halfvec corpora: the marker stays empty, every fit of
    the cycle is recorded and the embeddings end as they began."""
    c, corpora = atk
    try:
        c.execute(f"SET search_path = {path}")
        if role:
            c.execute(f"SET ROLE {role}")
        for d, r in corpora:
            c.execute("CALL chk.cycle(%s::pg_catalog.regclass, %s::pg_catalog.regclass)", (d, r))
    finally:
        c.execute("RESET ROLE")
        c.execute("RESET search_path")
    assert marker(c) == "marker rows: 0, hostile calls: 0"
    for d, _ in corpora:
        assert c.execute("SELECT chk.summary(%s)", (d,)).fetchone()[0] == \
            f"{d}: fits applied 1, dry_run 4, rejected 1, reverted 7; embeddings as before: t"


def test_foreign_staged_fit_from_another_session(atk):
    """The owner stages a fit; the writer (UPDATE on the table), in its own session, can
    neither apply nor drop it, nor forge the catalog; the owner applies it from a third one."""
    c, _ = atk
    owner, writer = connect(user=OWNER), connect(user=WRITER)
    try:
        owner.execute("SET nudge.progress = off")
        fit, n = owner.execute("SELECT fit_id, records_changed FROM other_schema.nudge_fit("
                               "'attack.dv', 'embedding', 'attack.q', 'attack.rv', gamma => 0.2, staged => true)").fetchone()
        state = "SELECT chk.fit_state(%s)"
        before = c.execute(state, (fit,)).fetchone()[0]
        assert before == f"status staged, rows_written 0, staged rows {n}, backups 0"
        table = c.execute("SELECT chk.fingerprint('attack.dv')").fetchone()[0]
        for sql in (f"CALL other_schema.nudge_apply({fit})",
                    f"CALL other_schema.nudge_apply({fit}, 1)",
                    f"SELECT other_schema.nudge_revert({fit})",
                    f"SELECT other_schema.nudge_apply_step({fit}, 10)",
                    f"UPDATE nudge.fits SET status = 'reverted' WHERE fit_id = {fit}",
                    f"DELETE FROM nudge.fit_staged WHERE fit_id = {fit}",
                    f"UPDATE nudge.fit_staged SET vector = vector WHERE fit_id = {fit}",
                    f"INSERT INTO nudge.fit_backups (fit_id, corpus, row_id, original, written) "
                    f"VALUES ({fit}, 'attack.dv', '39', '{{1,1,1,1,1,1,1,1}}', 0)",
                    "SELECT pg_catalog.nextval('nudge.fits_fit_id_seq')"):
            assert sqlstate_of(writer, sql) == "42501", sql
        assert c.execute(state, (fit,)).fetchone()[0] == before
        assert c.execute("SELECT chk.fingerprint('attack.dv')").fetchone()[0] == table
        third = connect(user=OWNER)
        try:
            third.execute("SET nudge.progress = off")
            assert third.execute(f"CALL other_schema.nudge_apply({fit}, 7)").fetchone() == (n, 0)
            assert third.execute("SELECT other_schema.nudge_revert(%s)", (fit,)).fetchone()[0] == n
        finally:
            third.close()
    finally:
        owner.close()
        writer.close()
    assert c.execute("SELECT chk.emb_fp('attack.dv') = fp FROM chk.originals "
                     "WHERE corpus::oid = 'attack.dv'::regclass::oid").fetchone()[0]
    assert marker(c) == "marker rows: 0, hostile calls: 0"


def test_internal_functions_are_not_public(atk):
    c, _ = atk
    plain = connect(user=PLAIN)
    try:
        for sql in ("SELECT other_schema.nudge_shard_pass('{}', 'id', 'embedding', NULL, '\\x')",
                    "SELECT other_schema.nudge_shard_topk('{}', 'id', 'embedding', '\\x')"):
            assert sqlstate_of(plain, sql) == "42501", sql
    finally:
        plain.close()


# --------------------------------------------------------------------------- allocations

class PrivateCluster(pg_util.PrivateCluster):
    def __init__(self):
        super().__init__(prefix="nudge-attacks-", timeout=TIMEOUT)


def u64(x):
    return x.to_bytes(8, "little")


def spec(dim, k=0, nq=0, nm=0, rest=b""):
    return b"NDGS\x02" + u64(dim) + u64(k) + u64(nq) + u64(nm) + rest + u64(0) * 2  # no partitions


def pass_request(spec_bytes, tail=None):
    return b"NDGQ\x02" + u64(len(spec_bytes)) + spec_bytes + (tail if tail is not None else u64(0) * 4)


def topk_request(k, dim, floats):
    return (b"NDGK\x03" + u64(k) + u64(6) + b"cosine" + u64(dim) + u64(len(floats) // 4) + floats + u64(0)
            + u64(0))  # (no partitions)


def reply_state(b):
    """The SQLSTATE of a shard function's error reply, "ok" for an answer, None for NULL."""
    if b is None:
        return None
    b = bytes(b)
    if b[:6] == b"NDGR\x02E" and len(b) >= 14:
        code = int.from_bytes(b[6:14], "little")
        return "".join(chr(((code >> (6 * i)) & 63) + 48) for i in range(5))
    if b[:6] == b"NDGR\x02O":
        return "ok"
    return "not a reply"


def test_allocation_attacks_do_not_crash():
    """As a superuser (the only role that may call them): shard specs and top-k requests whose
    sizes ask for terabytes, NULLs, and 400 seeded mutations of valid requests. Each call
    answers or raises a SQLSTATE not of class XX; the backend and the postmaster live on."""
    pytest.importorskip("psycopg")
    try:
        cluster = PrivateCluster()
    except (subprocess.CalledProcessError, OSError) as e:
        pytest.skip(f"cannot start a private cluster: {e}")
    psycopg = _psycopg()
    try:
        c = cluster.connect()
        c.execute("CREATE EXTENSION nudge")
        ns = c.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                       "WHERE e.extname = 'nudge'").fetchone()[0]
        c.execute("CREATE TABLE docs_102008 AS SELECT i AS id, ARRAY(SELECT sin(i * j * 0.41 + j)::real "
                  "FROM generate_series(1, 4) j) AS embedding FROM generate_series(1, 40) i")
        shard = c.execute("SELECT 'docs_102008'::regclass::oid").fetchone()[0]
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        ones = bytes.fromhex("0000803f")             # 1.0f
        cases = [
            ("pass", [], pass_request(spec(1 << 40, nm=1, rest=u64(0)))),       # 4 TiB of moving vectors
            ("pass", [], pass_request(spec(1 << 61, nm=1, rest=u64(0)))),       # past any size
            ("pass", [], pass_request(spec(1 << 20, nm=1 << 16, rest=b"".join(u64(i) for i in range(1 << 16))))),
            ("pass", [shard], pass_request(spec(1 << 32, nm=1, rest=u64(0)))),
            ("pass", [shard], pass_request(spec(4, k=1 << 62, nq=1, rest=ones * 4))),
            ("pass", [], pass_request(spec(4), tail=u64(1 << 40))),            # a labelled count past the bytes
            ("topk", [], topk_request(10, 1 << 40, b"")),
            ("topk", [shard], topk_request(1 << 62, 4, ones * 4)),
            ("topk", [shard], topk_request(10, 4, ones * (4 << 16))),           # 65536 queries
        ]
        valid = [("pass", [shard], pass_request(spec(4))),
                 ("pass", [shard], pass_request(spec(4, k=3, nq=2, nm=2, rest=ones * 8 + u64(1) + u64(7)))),
                 ("topk", [shard], topk_request(3, 4, ones * 8))]
        rng = random.Random(17)
        for _ in range(400):
            kind, shards, msg = rng.choice(valid)
            b = bytearray(msg)
            for _ in range(rng.randint(1, 4)):
                what = rng.random()
                if what < 0.4 and len(b) > 8:            # a u64 field set to something huge
                    at = rng.randrange(0, len(b) - 8)
                    b[at:at + 8] = u64(rng.choice([1 << 40, 1 << 62, (1 << 64) - 1, 1 << 31, rng.getrandbits(64)]))
                elif what < 0.7 and b:                   # a byte flipped
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                elif what < 0.85:                        # truncated
                    del b[rng.randrange(len(b) + 1):]
                else:                                    # garbage appended
                    b += rng.randbytes(rng.randint(1, 32))
            cases.append((kind, shards, bytes(b)))
        cases += [("pass", None, None), ("topk", None, None)]
        internal = []
        for kind, shards, msg in cases:
            sql = (f"SELECT {ns}.nudge_shard_pass(%s::oid[], 'id', 'embedding', NULL, %s)" if kind == "pass"
                   else f"SELECT {ns}.nudge_shard_topk(%s::oid[], 'id', 'embedding', %s)")
            try:
                got = reply_state(c.execute(sql, (shards, msg)).fetchone()[0])
            except psycopg.OperationalError as e:     # the backend is gone
                pytest.fail(f"{kind} request {msg[:64]!r}... crashed the backend: {e}")
            except psycopg.Error as e:
                got = e.sqlstate
            if got and got.startswith("XX"):
                internal.append((kind, msg[:64] if msg else msg, got))
            assert c.execute("SELECT 1").fetchone() == (1,)
        assert internal == [], internal
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started
        assert "terminated by signal" not in cluster.log()
        c.close()
    finally:
        cluster.stop()


# --------------------------------------------------------------------------- Citus

CITUS_PORT = os.environ.get("CITUS_COORD_PORT")
CITUS_DB = os.environ.get("CITUS_DB", "nudge_citus")
C_ATTACKER, C_OWNER, C_PLAIN = "nudge_citus_attacker", "nudge_citus_owner", "nudge_citus_plain"


def _citus_ports():
    ports = [int(CITUS_PORT)]
    cdir = os.environ.get("CITUS_DIR")
    for w in ("worker1", "worker2"):
        conf = pathlib.Path(cdir or "", w, "postgresql.conf")
        if cdir and conf.exists():
            ports += [int(p) for p in re.findall(r"^port = (\d+)$", conf.read_text(), re.M)[-1:]]
    return ports


def _node(port, **kw):
    return _psycopg().connect(host="127.0.0.1", port=port, user="postgres", dbname=CITUS_DB,
                              autocommit=True, connect_timeout=10, **kw)


@pytest.mark.skipif(not CITUS_PORT, reason="no Citus cluster (scripts/citus.sh needs the Citus tarball "
                                           "in ../shared/vendor or a built copy)")
def test_citus_hostile_objects_on_every_node():
    """Hostile objects in public and in evil on the coordinator and both workers; a
    distributed table fitted, evaluated, staged + applied, refitted and reverted by a superuser
    and by its owner, with the default path and with evil first. Every node's marker stays
    empty; a plain role cannot run the shard functions on a worker."""
    ports = _citus_ports()
    assert len(ports) == 3, f"coordinator and 2 workers expected, found ports {ports}"
    nodes = [_node(p) for p in ports]
    coord = nodes[0]
    plant, helpers = regress_block("plant"), regress_block("helpers")
    try:
        coord.execute("SET client_min_messages = warning")
        coord.execute("CREATE EXTENSION IF NOT EXISTS vector")
        coord.execute("CREATE EXTENSION IF NOT EXISTS nudge")
        for r in (C_ATTACKER, C_OWNER, C_PLAIN):
            coord.execute(f"DROP ROLE IF EXISTS {r}")
            coord.execute(f"CREATE ROLE {r} LOGIN")        # Citus creates roles on the workers too
        for n in nodes:                                      # each node's own marker, helpers, plants
            n.execute("SET client_min_messages = warning")
            n.execute("SET citus.enable_ddl_propagation = off")
            n.execute("DROP SCHEMA IF EXISTS chk, evil CASCADE")
            n.execute("DROP TABLE IF EXISTS public.attack_marker")
            n.execute("DROP SEQUENCE IF EXISTS public.attack_hits")
            n.execute("CREATE TABLE public.attack_marker (who text, what text)")
            n.execute("GRANT SELECT, INSERT ON public.attack_marker TO PUBLIC")
            n.execute("CREATE SEQUENCE public.attack_hits")
            n.execute("GRANT USAGE ON SEQUENCE public.attack_hits TO PUBLIC")
            n.execute(f"GRANT CREATE ON SCHEMA public TO {C_ATTACKER}")
            n.execute(f"CREATE SCHEMA evil AUTHORIZATION {C_ATTACKER}")
            n.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
            n.execute("CREATE SCHEMA chk")
            n.execute("GRANT USAGE ON SCHEMA chk TO PUBLIC")
            n.execute(plant)
            n.execute(PLANT_VECTOR)
        coord.execute(helpers)                               # chk.*: the coordinator's own
        coord.execute("SET citus.enable_ddl_propagation = on")
        coord.execute("DROP SCHEMA IF EXISTS attack CASCADE")
        coord.execute("CREATE SCHEMA attack")
        coord.execute(f"ALTER SCHEMA attack OWNER TO {C_OWNER}")
        coord.execute("GRANT USAGE ON SCHEMA attack TO PUBLIC")
        coord.execute(f"SET ROLE {C_OWNER}")
        coord.execute(f"""CREATE TABLE attack.q AS
            SELECT k AS id, ARRAY(SELECT sin((k * 3 % 40 + 1) * j * 0.41 + j + 0.3 * cos(k * j))::real
                                    FROM generate_series(1, {DIM}) j)::vector({DIM}) AS embedding
              FROM generate_series(1, 12) k""")
        coord.execute(f"CREATE TABLE attack.dv (id integer PRIMARY KEY, embedding vector({DIM}), nudged vector({DIM}))")
        coord.execute(f"""INSERT INTO attack.dv SELECT i, ARRAY(SELECT sin(i * j * 0.41 + j)::real
                            FROM generate_series(1, {DIM}) j) FROM generate_series(1, 40) i""")
        coord.execute("CREATE TABLE attack.rv AS SELECT k AS query_id, k * 3 % 40 + 1 AS doc_id FROM generate_series(1, 12) k")
        coord.execute(GUARD_TABLES)
        coord.execute("SELECT create_distributed_table('attack.dv', 'id')")
        coord.execute("RESET ROLE")
        coord.execute("INSERT INTO chk.originals VALUES ('attack.dv', chk.emb_fp('attack.dv'))")
        for n in nodes:
            n.execute("SET citus.enable_ddl_propagation = off")
            n.execute(f"SET ROLE {C_ATTACKER}")
            assert n.execute("SELECT chk.plant('public', true) + chk.plant('evil', true) "
                             "+ chk.plant_vector('evil', 'public')").fetchone()[0] > 2000
            n.execute("RESET ROLE")
        coord.execute("SET nudge.progress = off")
        for path in ('"$user", public', "evil, public, pg_catalog"):
            for role in (None, C_OWNER):
                try:
                    coord.execute(f"SET search_path = {path}")
                    if role:
                        coord.execute(f"SET ROLE {role}")
                    coord.execute("CALL chk.cycle('attack.dv', 'attack.rv')")
                finally:
                    coord.execute("RESET ROLE")
                    coord.execute("RESET search_path")
        assert coord.execute("SELECT chk.summary('attack.dv')").fetchone()[0] == \
            "attack.dv: fits applied 4, dry_run 16, rejected 4, reverted 28; embeddings as before: t"
        for port, n in zip(ports, nodes):   # (chk.* exists on the coordinator only)
            assert n.execute("SELECT pg_catalog.format('marker rows: %s, hostile calls: %s', "
                             "(SELECT count(*) FROM public.attack_marker), "
                             "(SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.attack_hits))"
                             ).fetchone()[0] == "marker rows: 0, hostile calls: 0", \
                (port, n.execute("SELECT what, who, count(*) FROM public.attack_marker GROUP BY 1, 2").fetchall())
        plain = _psycopg().connect(host="127.0.0.1", port=ports[1], user=C_PLAIN, dbname=CITUS_DB,
                                   autocommit=True, connect_timeout=10)
        try:
            ns = plain.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                               "WHERE e.extname = 'nudge'").fetchone()[0]
            assert sqlstate_of(plain, f"SELECT {ns}.nudge_shard_pass('{{}}', 'id', 'embedding', NULL, '\\x')") == "42501"
            assert sqlstate_of(plain, f"SELECT {ns}.nudge_shard_topk('{{}}', 'id', 'embedding', '\\x')") == "42501"
        finally:
            plain.close()
    finally:
        coord.execute("RESET ROLE")
        coord.execute("RESET search_path")
        coord.execute("SET citus.enable_ddl_propagation = on")
        coord.execute("DROP SCHEMA IF EXISTS attack CASCADE")
        for n in nodes:
            n.execute("RESET ROLE")
            n.execute("SET citus.enable_ddl_propagation = off")
            n.execute("DROP SCHEMA IF EXISTS chk, evil CASCADE")
            if n.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (C_ATTACKER,)).fetchone():
                n.execute(f"DROP OWNED BY {C_ATTACKER}")
            n.execute("DROP TABLE IF EXISTS public.attack_marker")
            n.execute("DROP SEQUENCE IF EXISTS public.attack_hits")
        coord.execute("SET citus.enable_ddl_propagation = on")
        for n in nodes:                                      # the coordinator first: Citus drops them everywhere
            for r in (C_ATTACKER, C_OWNER, C_PLAIN):
                n.execute(f"DROP ROLE IF EXISTS {r}")
        for n in nodes:
            n.close()

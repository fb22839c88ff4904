"""Progress NOTICEs: phase, rows done / total and elapsed time, quiet when switched off."""
import re

import pytest


@pytest.fixture(scope="module")
def small(db):
    db.execute("DROP TABLE IF EXISTS p_docs, p_q, p_qrels")
    db.execute("""CREATE TABLE p_docs AS SELECT i AS id,
                    ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 8) j) AS embedding
                  FROM generate_series(1, 3000) i""")
    db.execute("""CREATE TABLE p_q AS SELECT k AS id,
                    ARRAY(SELECT sin((k * 7 % 3000 + 1) * j * 0.37 + j + 0.4 * cos(k * j))::real
                          FROM generate_series(1, 8) j) AS embedding
                  FROM generate_series(1, 200) k""")
    db.execute("CREATE TABLE p_qrels AS SELECT k AS query_id, k * 7 % 3000 + 1 AS doc_id FROM generate_series(1, 200) k")
    db.execute("ANALYZE p_docs")
    return db


def run_with_notices(conn, sql):
    notices = []
    handler = lambda d: notices.append(d.message_primary)
    conn.add_notice_handler(handler)
    try:
        conn.execute(sql).fetchall()
    finally:
        conn.remove_notice_handler(handler)
    return notices


def test_fit_reports_each_phase(small):
    small.execute("SET nudge.progress = on")
    small.execute("SET nudge.progress_interval = 0")
    small.execute("SET nudge.batch_rows = 500")
    try:
        notices = run_with_notices(small, "SELECT * FROM nudge_fit('p_docs', 'embedding', 'p_q', 'p_qrels')")
    finally:
        small.execute("RESET nudge.progress_interval")
        small.execute("RESET nudge.batch_rows")
    pat = re.compile(r"^nudge_fit: ([a-z -]+): (\d+)(?: of (\d+) \(\d+%\))?, [\d.]+ s$")
    parsed = [pat.match(n) for n in notices]
    assert all(parsed), [n for n, p in zip(notices, parsed) if not p]
    phases = [p.group(1) for p in parsed]
    for phase in ("reading queries", "scanning corpus", "choosing gamma", "applying gamma", "writing rows"):
        assert phase in phases, (phase, phases)
    scans = [(int(p.group(2)), p.group(3)) for p in parsed if p.group(1) == "scanning corpus"]
    assert len(scans) >= 6, scans                       # one per 500-row batch
    assert all(total == "3000" for _, total in scans), scans
    assert scans[-1][0] == 3000
    assert [d for d, _ in scans] == sorted(d for d, _ in scans)


def test_evaluate_reports_and_off_is_quiet(small):
    small.execute("SET nudge.progress_interval = 0")
    try:
        notices = run_with_notices(small, "SELECT * FROM nudge_evaluate('p_docs', 'embedding', 'p_q', 'p_qrels')")
        assert any(n.startswith("nudge_evaluate: k-nn search: 3000 of 3000") for n in notices), notices
        small.execute("SET nudge.progress = off")
        quiet = run_with_notices(small, "SELECT * FROM nudge_evaluate('p_docs', 'embedding', 'p_q', 'p_qrels')")
        assert quiet == []
    finally:
        small.execute("RESET nudge.progress")
        small.execute("RESET nudge.progress_interval")

"""Every public function of the extension is documented in docs/reference.md."""
from pathlib import Path

import re

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_every_function_is_documented(db):
    rows = db.execute(
        """SELECT DISTINCT p.proname
             FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
             JOIN pg_proc p ON p.oid = d.objid
            WHERE e.extname = 'nudge' AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'"""
    ).fetchall()
    names = sorted(r[0] for r in rows)
    assert "nudge_fit" in names and "nudge_revert" in names, names
    headings = set(re.findall(r"^## (\w+)", REFERENCE.read_text(), flags=re.M))
    missing = [n for n in names if n not in headings]
    assert not missing, f"functions missing from docs/reference.md: {missing}"


def test_every_setting_is_documented(db):
    db.execute("LOAD 'nudge'")
    names = [r[0] for r in db.execute("SELECT name FROM pg_settings WHERE name LIKE 'nudge.%'")]
    assert len(names) >= 4, names
    text = REFERENCE.read_text()
    missing = [n for n in names if f"`{n}`" not in text]
    assert not missing, f"settings missing from docs/reference.md: {missing}"

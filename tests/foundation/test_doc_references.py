"""Every Markdown document the package's code cites exists in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_CITED = re.compile(r"[A-Za-z0-9_./-]*[A-Za-z0-9_-]\.md\b")


def test_cited_documents_exist() -> None:
    """A cited name is found as a path from the repository root, or as a file name somewhere in it (ARCHITECTURE.md
    was cited while the project had none)."""
    present = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and "node_modules" not in p.parts}
    missing = [
        f"{source.relative_to(ROOT)}: {name}"
        for source in sorted((ROOT / "appliance").rglob("*.py"))
        for name in _CITED.findall(source.read_text(encoding="utf-8"))
        if not (ROOT / name).is_file() and Path(name).name not in present
    ]
    assert not missing, missing

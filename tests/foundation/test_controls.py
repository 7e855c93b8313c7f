"""docs/compliance/controls.yaml stays true: every code path and test it names exists."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTROLS = ROOT / "docs" / "compliance" / "controls.yaml"


def _load() -> list[dict[str, object]]:
    data = yaml.safe_load(CONTROLS.read_text(encoding="utf-8"))
    controls = data["controls"]
    assert isinstance(controls, list) and controls
    return controls


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
    return names


def test_every_control_is_complete() -> None:
    """Each control has an id, a mechanism, at least one code path and at least one test."""
    ids = set()
    for control in _load():
        assert control.get("id") and control["id"] not in ids, control
        ids.add(control["id"])
        for key in ("framework", "reference", "mechanism", "code", "tests"):
            assert control.get(key), f"{control['id']}: missing {key}"


def test_code_paths_exist() -> None:
    """Every code path named by a control exists in the repository."""
    missing = [
        f"{c['id']}: {p}"
        for c in _load()
        for p in c["code"]  # type: ignore[attr-defined]
        if not (ROOT / str(p)).exists()
    ]
    assert not missing, missing


def test_tests_exist() -> None:
    """Every test named by a control exists as a test function in the named file."""
    missing = []
    for control in _load():
        for test_id in control["tests"]:  # type: ignore[attr-defined]
            file_part, _, func = str(test_id).partition("::")
            path = ROOT / file_part
            func = func.split("::")[-1].split("[")[0]
            if not path.is_file() or (func and func not in _test_functions(path)):
                missing.append(f"{control['id']}: {test_id}")
    assert not missing, missing


def test_rendered_mapping_is_current() -> None:
    """hipaa.md and gdpr.md are exactly what scripts/compliance_docs.py renders from controls.yaml."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compliance_docs", ROOT / "scripts" / "compliance_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stale = [p.name for p, text in module.rendered().items() if not p.is_file() or p.read_text("utf-8") != text]
    assert not stale, f"run: .venv/bin/python scripts/compliance_docs.py ({stale} out of date)"

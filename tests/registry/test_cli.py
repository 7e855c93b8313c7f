"""`appliance registry ...` and `appliance erasure plan` end to end: real keystore, real audit trail, SQLite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT
from tests.fixtures.cli import Cli
from tests.registry.conftest import RunFactory, make_dataset


def _token(out: str) -> str:
    match = re.search(r"\(shown once; give it to them in person\): (\S+)", out)
    assert match, out
    return match.group(1)


def test_cli_lifecycle(cli: Cli, make_run: RunFactory, tmp_path: Path, data_dir: Path) -> None:
    """grant -> add -> approve x2 (tokens) -> publish -> list/show/verify -> lineage/erasure -> unpublish -> retire."""
    code, out, _ = cli("registry", "grant", "olga", "--role", "admin", "--actor", "olga")
    assert code == 0
    olga = _token(out)
    tokens: dict[str, str] = {}
    code, out, err = cli("registry", "grant", "alice", "--role", "approver", "--actor", "olga", stdin=olga + "\n")
    assert code == 0, err
    tokens["alice"] = _token(out)
    olga_file, bob_file = tmp_path / "olga.token", tmp_path / "tokens" / "bob"
    olga_file.write_text(olga)
    code, out, err = cli(
        "registry",
        "grant",
        "bob",
        "--role",
        "approver",
        "--actor",
        "olga",
        "--token-file",
        str(olga_file),
        "--token-out",
        str(bob_file),
    )
    assert code == 0, err
    assert bob_file.stat().st_mode & 0o777 == 0o600 and "written to" in out
    tokens["bob"] = bob_file.read_text().strip()
    code, _, err = cli(
        "registry", "grant", "mallory", "--role", "approver", "--actor", "olga", stdin="wrong-token-xxxxxxxxxx\n"
    )
    assert code == 77 and "UNAUTHENTICATED" in err

    dataset = make_dataset(tmp_path / "ds", ["MRN-1", "MRN-2", "MRN-2"])
    code, out, err = cli("registry", "add", str(make_run(dataset=dataset)), "--name", "triage", "--actor", "olga")
    assert code == 0, err
    assert "registered triage v1 (staged)" in out

    code, _, err = cli("registry", "approve", "triage", "1", "--actor", "alice", stdin=tokens["bob"] + "\n")
    assert code == 77 and "UNAUTHENTICATED" in err
    token_file = tmp_path / "alice.token"
    token_file.write_text(tokens["alice"] + "\n")
    code, out, err = cli("registry", "approve", "triage", "1", "--actor", "alice", "--token-file", str(token_file))
    assert code == 0, err
    assert "1 of 2 approvals" in out
    code, out, err = cli("registry", "approve", "triage", "1", "--actor", "bob", "--comment", "ok", stdin=tokens["bob"])
    assert code == 0, err
    assert "status approved" in out

    code, out, err = cli("registry", "publish", "triage", "1", "--target", "tgi", "--actor", "olga")
    assert code == 0, err
    env = (data_dir / "serving" / "tgi" / "lora_adapters.env").read_text()
    assert env == f"LORA_ADAPTERS=triage-v1={(data_dir / 'serving' / 'adapters' / 'triage-v1').resolve()}\n"

    code, out, _ = cli("registry", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and listed[0]["status"] == "production" and listed[0]["targets"] == ["tgi"]
    code, out, _ = cli("registry", "show", "triage", "1")
    assert code == 0 and [a["subject"] for a in json.loads(out)["approvals"]] == ["alice", "bob"]
    assert json.loads(out)["evaluation"]["delta"]["loss"] == -0.3  # registry show prints the run's evaluation
    code, out, _ = cli("registry", "verify")
    assert code == 0 and "triage v1: ok" in out

    code, out, _ = cli("registry", "lineage", "--subject", "MRN-2", "--json")
    lineage = json.loads(out)
    assert code == 0 and lineage["datasets"][0]["records"] == 2 and lineage["adapters"][0]["name"] == "triage"
    code, out, _ = cli("erasure", "plan", "--subject", "-", stdin="MRN-2\n")
    assert code == 0 and "retire, then retrain" in out and "group privacy" in out
    code, out, _ = cli("erasure", "plan", "--subject", "MRN-404")
    assert code == 0 and "nothing to retire" in out

    code, out, _ = cli("registry", "unpublish", "triage", "1", "--actor", "olga")
    assert code == 0 and "status approved" in out
    assert (data_dir / "serving" / "tgi" / "lora_adapters.env").read_text() == "LORA_ADAPTERS=\n"
    code, out, _ = cli("registry", "retire", "triage", "1", "--reason", "superseded", "--actor", "olga")
    assert code == 0
    code, out, _ = cli("registry", "people", "--json")
    people = {p["subject"]: p["roles"] for p in json.loads(out)}
    assert people == {"alice": ["approver"], "bob": ["approver"], "olga": ["admin"]}
    audit_text = "".join(p.read_text(errors="replace") for p in (data_dir / "audit").rglob("*") if p.is_file())
    assert audit_text.count('"type":"registry.approve"') == 2
    assert "MRN-2" not in audit_text and tokens["alice"] not in audit_text


def test_cli_errors_map_to_exit_codes(cli: Cli, make_run: RunFactory) -> None:
    """Unknown adapters exit 66 (NOT_FOUND), bad names 65, and approving without the role 77."""
    code, _, err = cli("registry", "show", "nope", "1")
    assert code == 66 and "NOT_FOUND" in err
    code, _, err = cli("registry", "add", str(make_run()), "--name", "Bad Name")
    assert code == 65 and "VALIDATION_FAILED" in err
    code, _, err = cli("registry", "publish", "nope", "1", "--target", "xyz")
    assert code == 65 and "unknown publish target" in err
    code, _, err = cli("registry", "grant", "alice", "--role", "approver")
    assert code == 65 and "grant the admin role first" in err


def test_cli_subprocess_exit_code(data_dir: Path) -> None:
    """The installed entry point prints 'CODE: message' and exits non-zero for an unknown adapter."""
    env: dict[str, Any] = {
        "APPLIANCE_DATA_DIR": str(data_dir),
        "APPLIANCE_POLICIES_DIR": str(REPO_ROOT / "policies"),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "appliance", "registry", "show", "triage", "3"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=data_dir,
    )
    assert proc.returncode == 66, proc.stderr
    assert "NOT_FOUND: no adapter named 'triage'" in proc.stderr

"""`appliance train` and `appliance ledger show` through the real CLI (real key service and audit stage)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app, main
from tests.training.conftest import fingerprint_of

pytestmark = pytest.mark.slow

TINY = ["--steps", "3", "--batch-size", "8", "--physical-batch-size", "4", "--max-length", "48", "--lora-r", "4"]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, data_dir: Path, make_policy: Callable[..., Path]) -> Path:
    """APPLIANCE_* variables pointing the CLI at a fresh data directory and a 4.5-epsilon budget."""
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(make_policy(default={"epsilon_budget": 4.5})))
    return data_dir


def test_train_then_ledger_show(cli_env: Path, prepared: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The CLI trains, reports epsilon and eval loss, and `ledger show` lists the run and the remaining budget."""
    runner = CliRunner()
    out = tmp_path / "adapter"
    args = ["train", "--dataset", str(prepared), "--base", str(tiny_model), "--out", str(out), "--epsilon", "3"]
    result = runner.invoke(app, [*args, *TINY, "--trained-by", "analyst-7", "--audit-canaries", "6"])
    assert result.exit_code == 0, result.output
    assert "epsilon spent" in result.output and "eval loss" in result.output
    assert "privacy audit: 6 canaries" in result.output and "within the claimed epsilon" in result.output
    assert json.loads((out / "metadata.json").read_text())["trained_by"] == "analyst-7"
    shown = runner.invoke(app, ["ledger", "show"])
    assert shown.exit_code == 0, shown.output
    assert fingerprint_of(prepared)[:12] in shown.output and "finished" in shown.output
    as_json = json.loads(runner.invoke(app, ["ledger", "show", "--json"]).output)
    (dataset,) = as_json["datasets"]
    assert dataset["budget"] == 4.5 and 0 < dataset["remaining"] < 4.5
    assert as_json["runs"][0]["steps_taken"] == 3


def test_exhausted_budget_exit_code(
    cli_env: Path,
    prepared: Path,
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Over budget, `appliance train` exits 77 with PRIVACY_BUDGET_EXHAUSTED and the remaining epsilon."""
    base = ["appliance", "train", "--dataset", str(prepared), "--base", str(tiny_model), *TINY]
    monkeypatch.setattr(sys, "argv", [*base, "--out", str(tmp_path / "a"), "--epsilon", "4"])
    main()
    monkeypatch.setattr(sys, "argv", [*base, "--out", str(tmp_path / "b"), "--epsilon", "4"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 77
    err = capsys.readouterr().err
    assert "PRIVACY_BUDGET_EXHAUSTED" in err and "remaining" in err
    assert not (tmp_path / "b").exists()


def test_trained_by_defaults_to_the_person_behind_sudo(
    cli_env: Path, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under sudo the getpass login name is root: the trainer must be recorded as $SUDO_USER, or that person
    could approve their own adapter (the registry compares approvers with metadata.trained_by)."""
    import appliance.training

    seen: list[object] = []

    def fake_train(config: object, settings: object, **kwargs: object) -> None:
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(appliance.training, "train", fake_train)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "root")
    monkeypatch.setenv("SUDO_USER", "alice")
    args = [
        "train",
        "--dataset",
        str(prepared),
        "--base",
        str(tmp_path),
        "--out",
        str(tmp_path / "a"),
        "--epsilon",
        "1",
    ]
    result = CliRunner().invoke(app, [*args, *TINY])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.trained_by == "alice"  # type: ignore[attr-defined]

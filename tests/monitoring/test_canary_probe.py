"""Canary probes in production: secrets sealed from training to the registry, probed through a real engine process.

One module fixture trains a tiny DP adapter with canaries (real training, local key service), registers it (real
registry and audit trail), and serves it from an ``appliance serve`` process; every log line of the three is
captured to check that no secret or prompt reaches one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.canaries import SEALED_FILE, SPACE_BITS, CanaryDocument, candidate_pool
from appliance.config import Settings, load_settings
from appliance.errors import IntegrityViolation, NotFound, ValidationFailed
from appliance.monitoring import CanaryMetrics, CanaryProbeResult, probe_canaries, record_probe
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.engines import EngineProcess
from tests.fixtures.logs import logs_to_file
from tests.registry.conftest import OPERATOR
from tests.serving.conftest import free_port, pin_publication_keys, write_adapter_list
from tests.training.conftest import tiny_options, write_prepared

CANDIDATES = 16
SERVED_ID = "triage-v1"


@dataclass
class Served:
    """The trained, registered and served adapter, with what the test must find nowhere."""

    settings: Settings
    out: Path
    secrets: list[str]
    prompts: list[str]
    document: CanaryDocument
    url: str
    registry: Any
    audit: Any
    logs: list[Path]
    tiny_model: Path


def _all_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Train (DP, 2 canaries inserted 16 times), register, and serve the adapter from an engine process."""
    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service
    from appliance.registry import open_registry
    from appliance.training import TrainingRun, make_config
    from appliance.training._data import prompt_text
    from tests.conftest import REPO_ROOT
    from tests.registry.conftest import enrol

    root = tmp_path_factory.mktemp("probe")
    log_path = root / "appliance.log"
    with logs_to_file(log_path, logging.DEBUG):
        data_dir = root / "var"
        data_dir.mkdir()
        settings = load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies")
        keys = open_key_service(settings)
        audit = open_audit_log(settings, keys=keys)
        prepared = write_prepared(root / "prepared")
        out = root / "adapter"
        options = tiny_options(prepared, tiny_model, out, canaries=2, canary_repetitions=[16], epsilon=8.0)
        options["canary_candidates"] = CANDIDATES
        run = TrainingRun(make_config(**options), settings, keys=keys, audit=audit)
        run.run()
        secrets = [c.secret for c in run.prepared.canaries]
        prompts = [prompt_text(run.prepared.tokenizer, c.instruction) for c in run.prepared.canaries]

        registry = enrol(open_registry(settings, keys=keys, audit=audit))
        registry.add(out, "triage", OPERATOR)
        document = registry.canaries("triage", 1, OPERATOR)

        listing = write_adapter_list(
            root / "serving" / "adapters.json", {SERVED_ID: (out, registry.show("triage", 1).weights_fingerprint)}
        )
        engine_log = root / "engine.log"
        pinned = pin_publication_keys(root / "registry.pub.json")
        engine = EngineProcess(
            tiny_model,
            root / "engine-var",
            free_port(),
            adapters=listing,
            env={"APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS": str(pinned)},
            log=engine_log,
        )
        try:
            engine.start()
            engine.wait_healthy()
            url = engine.url
            yield Served(
                settings, out, secrets, prompts, document, url, registry, audit, [log_path, engine_log], tiny_model
            )
        finally:
            engine.stop()
            registry.close()
            audit.close_sync()


def _probe(served: Served, *, protocol: str = "tgi", **kwargs: Any) -> CanaryProbeResult:
    from appliance.serving import EmbeddedBackend, VLLMBackend

    async def go() -> CanaryProbeResult:
        if protocol == "tgi":
            backend: Any = EmbeddedBackend(served.url, timeout_s=60)
        else:  # the OpenAI/vLLM client against the same engine: no prompt log-probabilities on that protocol
            backend = VLLMBackend(served.url, published_file=None, timeout_s=60)
        try:
            limits = served.registry.approval_limits()
            kwargs.setdefault("max_exposure", limits.max_canary_exposure)
            kwargs.setdefault("candidates", served.document.candidates)
            return await probe_canaries(backend, SERVED_ID, served.document.canaries, **kwargs)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def _local_exposures(served: Served, seed: int) -> list[float]:
    """Training's own measurement (``_scores`` + ``exposure``) of the same adapter over the same candidates."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.canaries import exposure
    from appliance.training._canaries import _scores

    tokenizer = AutoTokenizer.from_pretrained(served.tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(served.tiny_model), served.out).eval()
    rng = random.Random(seed)
    values = []
    for probe in served.document.canaries:
        pool = candidate_pool(probe.canary.secret, CANDIDATES, rng)
        scores = _scores(model, tokenizer, probe.canary, [probe.canary.secret, *pool], torch.device("cpu"))
        values.append(exposure(scores[0], scores[1:]))
    return values


class TestSealedSecrets:
    def test_secrets_are_nowhere_in_clear(self, served: Served) -> None:
        """No canary secret appears in the adapter directory (metadata.json, the sealed file) or anywhere under
        the registry's data directory (database, encrypted artifacts, audit trail, ledger)."""
        assert (served.out / SEALED_FILE).is_file()
        assert oct((served.out / SEALED_FILE).stat().st_mode & 0o777) == "0o600"
        meta = json.loads((served.out / "metadata.json").read_text())
        assert meta["canaries"]["sealed"] is True and meta["canaries"]["count"] == 2
        roots = [served.out, served.settings.data_dir]
        blobs = [(p, b) for r in roots for p, b in _all_bytes(r)]
        assert len(blobs) > 10
        for secret in served.secrets:
            leaks = [str(p) for p, b in blobs if secret.encode() in b]
            assert leaks == []

    def test_registry_returns_them_decrypted_in_memory(self, served: Served) -> None:
        """The registry's copy opens to the run's secrets and prompts; the read is audited without them."""
        doc = served.registry.canaries("triage", 1, OPERATOR)
        assert [p.canary.secret for p in doc.canaries] == served.secrets
        assert [p.prompt for p in doc.canaries] == served.prompts
        assert doc.candidates == CANDIDATES and all(p.canary.repetitions == 16 for p in doc.canaries)
        assert all(s not in repr(doc) for s in served.secrets)

    def test_publishing_never_writes_the_secrets(self, served: Served, tmp_path: Path) -> None:
        """The decrypted serving copy holds the adapter's files, never canaries.json."""
        adapter = served.registry._get
        with served.registry.db.session("test") as s:
            artifact = served.registry._artifact(adapter(s, "triage", 1))
        written = served.registry.artifacts.decrypt_to(tmp_path / "copy", **artifact)
        assert "canaries.json" not in written and "canaries.json" in artifact["files"]
        assert not (tmp_path / "copy" / "canaries.json").exists()

    def test_foreign_or_missing_sealed_file_is_refused(self, served: Served, tmp_path: Path) -> None:
        """A run whose metadata promises sealed canaries but lacks the file, or whose file was sealed for another
        run, is refused before anything is registered."""
        from appliance.audit import open_audit_log
        from appliance.keys import open_key_service
        from appliance.registry import open_registry

        src = served.settings.data_dir
        data_dir = tmp_path / "var"
        data_dir.mkdir()
        for name in ("keystore", "ledger.db"):
            shutil.copy2(src / name, data_dir / name)
        settings = load_settings(data_dir=data_dir, policies_dir=served.settings.policies_dir)
        keys = open_key_service(settings)
        audit = open_audit_log(settings, keys=keys)
        registry = open_registry(settings, keys=keys, audit=audit)
        try:
            missing = tmp_path / "missing"
            shutil.copytree(served.out, missing)
            (missing / SEALED_FILE).unlink()
            with pytest.raises(ValidationFailed, match=r"canaries\.sealed is missing"):
                registry.add(missing, "triage", OPERATOR)
            foreign = tmp_path / "foreign"
            shutil.copytree(served.out, foreign)
            envelope = json.loads((foreign / SEALED_FILE).read_text())
            envelope["run_id"] = "another-run"
            (foreign / SEALED_FILE).write_text(json.dumps(envelope))
            with pytest.raises(IntegrityViolation, match="another training run"):
                registry.add(foreign, "triage", OPERATOR)
            assert registry.list_adapters() == []
            with pytest.raises(NotFound):
                registry.canaries("triage", 1, OPERATOR)
        finally:
            registry.close()
            audit.close_sync()


class TestProbeThroughTheEngine:
    def test_served_exposure_equals_training_measurement(self, served: Served) -> None:
        """Exposure from the engine's prompt log-probabilities equals training's local measurement of the same
        adapter over the same candidates."""
        result = _probe(served, rng=random.Random(11))
        assert result.method == "logprobs" and result.candidates == CANDIDATES
        assert result.requests == 2 * (1 + 1 + CANDIDATES)
        assert result.repetitions == (16, 16)
        assert list(result.exposures) == pytest.approx(_local_exposures(served, 11), abs=1e-3)
        assert all(0.0 <= e <= SPACE_BITS for e in result.exposures)

    def test_greedy_method_reports_reproduction_only(self, served: Served) -> None:
        """The greedy method sends one completion per canary and scores a secret it did not reproduce 0 bits."""
        result = _probe(served, method="greedy")
        assert result.method == "greedy" and result.requests == 2 and result.candidates == 0
        assert all(e in (0.0, SPACE_BITS) for e in result.exposures)

    def test_backend_without_prompt_logprobs_is_probed_greedily(self, served: Served) -> None:
        """Through the vLLM client (OpenAI protocol) ``auto`` falls back to greedy completions; ``logprobs`` insists
        and fails closed with BackendError instead of reporting a number it did not measure."""
        from appliance.errors import BackendError

        result = _probe(served, protocol="vllm")
        assert result.method == "greedy" and result.requests == 2
        with pytest.raises(BackendError):
            _probe(served, protocol="vllm", method="logprobs")

    def test_probe_is_audited_and_alerts_above_the_threshold(self, served: Served) -> None:
        """A probe is one adapter.canary_probe event (numbers only); above the threshold an adapter.canary_alert
        follows and the gauge carries the exposure."""
        metrics = CanaryMetrics()
        quiet = _probe(served, rng=random.Random(3), max_exposure=SPACE_BITS)
        assert (
            record_probe(served.audit, quiet, name="triage", version=1, fingerprint="ab" * 32, metrics=metrics) is False
        )
        assert quiet.threshold == SPACE_BITS and not quiet.exceeded  # no exposure can exceed log2|R|
        loud = dataclasses.replace(quiet, threshold=-1.0)  # the same measurement under a threshold it exceeds
        assert record_probe(served.audit, loud, name="triage", version=1, fingerprint="ab" * 32, metrics=metrics)
        sample = metrics.registry.get_sample_value(
            "appliance_adapter_canary_exposure", {"adapter": "triage", "version": "1"}
        )
        assert sample == pytest.approx(loud.max_exposure)
        records = audit_records(served.settings.audit_dir)
        probes = [r for r in records if r["type"] == "adapter.canary_probe"]
        alerts = [r for r in records if r["type"] == "adapter.canary_alert"]
        assert len(probes) >= 2 and len(alerts) == 1
        assert alerts[0]["details"]["exceeded"] is True and alerts[0]["adapter"]["name"] == "triage"
        assert set(probes[0]["details"]) == {
            "method", "canaries", "candidates", "max_exposure", "threshold", "exceeded", "requests"
        }  # fmt: skip
        reads = [r for r in records if r["type"] == "registry.canary_read"]
        assert reads and reads[0]["details"] == {"canaries": 2}

    def test_no_secret_or_prompt_in_any_log(self, served: Served) -> None:
        """After training, registration, probes and alerts, no log line of the appliance or the engine process
        holds a canary secret, code or prompt."""
        _probe(served, rng=random.Random(5))
        text = "".join(p.read_text(errors="replace") for p in served.logs)
        assert "training" in text  # the capture worked
        codes = [p.canary.code for p in served.document.canaries]
        for needle in [*served.secrets, *codes, *served.prompts]:
            assert needle not in text

"""Publish output: what TGI, vLLM and the embedded engine read, checked against each one's documented syntax."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from appliance.config import load_settings
from appliance.errors import AuditUnavailable, ConfigError, Conflict, IntegrityViolation
from appliance.registry import Registry, open_registry
from tests.conftest import REPO_ROOT
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, enrol, snapshot


def _approved(registry: Registry, make_run: RunFactory, name: str) -> None:
    info = registry.add(make_run(ledger_db=registry.ledger_path), name, OPERATOR)
    for approver in APPROVERS:
        registry.approve(name, info.version, approver)


def parse_tgi_lora_adapters(value: str) -> list[tuple[str, str | None]]:
    """TGI's own parser (server/text_generation_server/utils/adapter.py, parse_lora_adapters), restated."""
    if not value:
        return []
    adapters = []
    for adapter in value.split(","):
        parts = adapter.strip().split("=")
        if len(parts) == 1:
            adapters.append((parts[0], None))
        elif len(parts) == 2:
            adapters.append((parts[0], parts[1]))
        else:
            raise ValueError(f"Invalid LoRA adapter format: {adapter}")
    return adapters


@dataclass
class LoRAModulePath:
    """vLLM's LoRAModulePath (vllm/entrypoints/openai/models/protocol.py): the fields --lora-modules accepts."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_vllm_lora_module(item: str) -> LoRAModulePath:
    """vLLM's LoRAParserAction for one --lora-modules value (vllm/entrypoints/openai/cli_args.py), restated."""
    if "=" in item and "," not in item:
        name, path = item.split("=")
        return LoRAModulePath(name, path)
    return LoRAModulePath(**json.loads(item))


def test_backend_lists_match_documented_syntax(registry: Registry, make_run: RunFactory) -> None:
    """TGI's env line, vLLM's JSON modules and the embedded list parse with each backend's rules and agree."""
    for name in ("triage", "discharge"):
        _approved(registry, make_run, name)
        for target in ("tgi", "vllm", "embedded"):
            registry.publish(name, 1, target, OPERATOR)
    serving = registry.publisher.serving_dir

    env = (serving / "tgi" / "lora_adapters.env").read_text()
    assert env.endswith("\n") and env.count("\n") == 1
    key, _, value = env.strip().partition("=")
    assert key == "LORA_ADAPTERS"
    tgi = parse_tgi_lora_adapters(value)
    assert [i for i, _ in tgi] == ["discharge-v1", "triage-v1"]

    modules = [
        parse_vllm_lora_module(json.dumps(m)) for m in json.loads((serving / "vllm" / "lora_modules.json").read_text())
    ]
    assert [m.name for m in modules] == ["discharge-v1", "triage-v1"]
    base = registry.show("triage", 1).base_model["path"]
    assert all(m.base_model_name == base for m in modules)

    embedded = json.loads((serving / "embedded" / "adapters.json").read_text())["adapters"]
    assert [(a["id"], a["name"], a["version"]) for a in embedded] == [
        ("discharge-v1", "discharge", 1),
        ("triage-v1", "triage", 1),
    ]
    assert {a["fingerprint"] for a in embedded} == {p.fingerprint for p in registry.published()}
    for entry in embedded:  # the digest of the exact config bytes written (base path rewrite included)
        written = (Path(entry["path"]) / "adapter_config.json").read_bytes()
        assert entry["config_sha256"] == hashlib.sha256(written).hexdigest()

    for (_, tgi_path), module, entry in zip(tgi, modules, embedded, strict=True):
        assert tgi_path == module.path == entry["path"]
        directory = Path(entry["path"])
        assert directory.is_absolute() and (directory / "adapter_config.json").is_file()
        assert [p.name for p in directory.glob("*.safetensors")] == ["adapter_model.safetensors"]
    leftovers = [p for p in serving.rglob(".*") if p.name != ".publish.lock"]
    assert leftovers == [], leftovers


def test_published_adapter_loads_with_peft(registry: Registry, make_run: RunFactory, tiny_model: Path) -> None:
    """The decrypted copy is a working peft adapter whose base path was rewritten to the registered base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _approved(registry, make_run, "triage")
    published = registry.publish("triage", 1, "embedded", OPERATOR)
    served = registry.publisher.adapter_dir(published.served_id)
    config = json.loads((served / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), served)
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_engine_loads_the_published_config_and_refuses_an_edited_one(registry: Registry, make_run: RunFactory) -> None:
    """The engine's check accepts the copy the registry published; editing its adapter_config.json (scaling,
    weights untouched) afterwards makes the load an IntegrityViolation."""
    from appliance.serving import read_embedded_list
    from appliance.serving.engine._model import prepare_adapter

    _approved(registry, make_run, "triage")
    registry.publish("triage", 1, "embedded", OPERATOR)
    [spec] = read_embedded_list(registry.publisher.list_path("embedded"))
    assert prepare_adapter(spec).config_sha256 == spec.config_sha256
    config_path = spec.path / "adapter_config.json"
    config = json.loads(config_path.read_bytes())
    config["lora_alpha"] = config["lora_alpha"] * 64
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    with pytest.raises(IntegrityViolation, match=r"adapter_config\.json"):
        prepare_adapter(spec)


@pytest.mark.parametrize("target", ["tgi", "vllm", "embedded"])
def test_publish_checks_the_registered_config_digest(registry: Registry, make_run: RunFactory, target: str) -> None:
    """TGI and vLLM load the published directory themselves: the registry checks the decrypted config against the
    SHA-256 recorded at ``registry add`` (what the approvers approved) before writing it, as it does the weights."""
    _approved(registry, make_run, "triage")
    with registry.db.engine.begin() as conn:
        files = json.loads(conn.execute(text("SELECT files FROM adapters")).scalar_one())
        files["adapter_config.json"]["sha256"] = "ab" * 32
        conn.execute(text("UPDATE adapters SET files = :f"), {"f": json.dumps(files)})
    before = snapshot(registry)
    with pytest.raises(IntegrityViolation, match=r"adapter_config\.json"):
        registry.publish("triage", 1, target, OPERATOR)
    assert snapshot(registry) == before
    assert not (registry.publisher.serving_dir / "adapters" / "triage-v1").exists()


@pytest.mark.parametrize("edited", ["adapter_config.json", "adapter_model.safetensors"])
def test_verify_checks_the_served_copy(registry: Registry, make_run: RunFactory, edited: str) -> None:
    """TGI and vLLM load the served copy without our check: ``registry verify`` compares it with the digests the
    registry recorded when it wrote it (config digest per publication, weights fingerprint)."""
    _approved(registry, make_run, "triage")
    registry.publish("triage", 1, "tgi", OPERATOR)
    assert all(r.ok for r in registry.verify())
    served = registry.publisher.adapter_dir("triage-v1") / edited
    served.write_bytes(served.read_bytes().replace(b"}", b" }", 1) if edited.endswith(".json") else b"x" * 16)
    [result] = registry.verify()
    assert not result.ok and edited in (result.error or "") and "served copy" in (result.error or "")


def test_publication_without_config_digest_is_refused_until_republished(
    registry: Registry, make_run: RunFactory
) -> None:
    """A publication made before the registry recorded config digests (schema 0001) is listed without one; the
    engine refuses that list, and unpublishing and publishing again restores a checked entry."""
    from appliance.serving import read_embedded_list

    for name in ("triage", "discharge"):
        _approved(registry, make_run, name)
    registry.publish("triage", 1, "embedded", OPERATOR)
    with registry.db.engine.begin() as conn:
        conn.execute(text("UPDATE publications SET config_sha256 = NULL"))
    registry.publish("discharge", 1, "embedded", OPERATOR)  # re-renders the whole list
    listing = registry.publisher.list_path("embedded")
    entries = {a["id"]: a for a in json.loads(listing.read_text())["adapters"]}
    assert "config_sha256" not in entries["triage-v1"] and "config_sha256" in entries["discharge-v1"]
    with pytest.raises(ConfigError, match=r"triage-v1.*no config_sha256"):
        read_embedded_list(listing)
    assert [r.ok for r in registry.verify("triage")] == [False]
    registry.unpublish("triage", 1, OPERATOR)
    registry.publish("triage", 1, "embedded", OPERATOR)
    assert [s.id for s in read_embedded_list(listing) if s.config_sha256] == ["discharge-v1", "triage-v1"]


def test_publish_twice_to_same_target_refused(registry: Registry, make_run: RunFactory) -> None:
    """Publishing an adapter already on a target is a Conflict; another target is fine."""
    _approved(registry, make_run, "triage")
    registry.publish("triage", 1, "tgi", OPERATOR)
    with pytest.raises(Conflict, match="already published to tgi"):
        registry.publish("triage", 1, "tgi", OPERATOR)
    assert registry.publish("triage", 1, "vllm", OPERATOR).targets == ("tgi", "vllm")


def test_audit_refusal_rolls_back_publish(registry: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """If the audit trail refuses the event, the database, the backend lists and the serving dir are as before."""
    _approved(registry, make_run, "triage")
    _approved(registry, make_run, "discharge")
    registry.publish("triage", 1, "tgi", OPERATOR)
    env_before = (registry.publisher.serving_dir / "tgi" / "lora_adapters.env").read_bytes()
    before = snapshot(registry)
    audit.fail = True
    with pytest.raises(AuditUnavailable):
        registry.publish("discharge", 1, "tgi", OPERATOR)
    with pytest.raises(AuditUnavailable):
        registry.retire("triage", 1, OPERATOR)
    assert snapshot(registry) == before
    assert (registry.publisher.serving_dir / "tgi" / "lora_adapters.env").read_bytes() == env_before
    assert sorted(p.name for p in (registry.publisher.serving_dir / "adapters").iterdir()) == ["triage-v1"]


def test_audit_refusal_rolls_back_add(registry: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """A registration whose audit event fails leaves no rows and no encrypted files behind."""
    before = snapshot(registry)
    audit.fail = True
    with pytest.raises(AuditUnavailable):
        registry.add(make_run(), "triage", OPERATOR)
    assert snapshot(registry) == before
    assert not any(p.is_file() for p in registry.artifacts.root.rglob("*"))


def test_unsafe_serving_path_refused(tmp_path: Path, make_run: RunFactory, keys: object) -> None:
    """A data directory whose path would break TGI's comma/equals syntax is refused before anything is written."""
    data_dir = tmp_path / "a,b=c"
    data_dir.mkdir()
    settings = load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies")
    from appliance.keys import open_key_service

    reg = enrol(open_registry(settings, keys=open_key_service(settings), audit=RecordingAudit()))
    try:
        _approved(reg, make_run, "triage")
        with pytest.raises(ConfigError, match="choose another data_dir"):
            reg.publish("triage", 1, "tgi", OPERATOR)
        assert reg.show("triage", 1).status == "approved"
    finally:
        reg.close()


@pytest.mark.parametrize("target", ["embedded", "tgi", "vllm"])
def test_verify_refuses_a_list_edited_on_the_serving_host(
    registry: Registry, make_run: RunFactory, target: str, tmp_path: Path
) -> None:
    """Each list is signed; a list redirected to other weights (its digests edited to match) fails ``registry
    verify`` on the list's signature before any fingerprint, and so does every adapter served from it."""
    import shutil

    from appliance.serving import signature_path

    for name in ("triage", "discharge"):
        _approved(registry, make_run, name)
        registry.publish(name, 1, target, OPERATOR)
    assert all(r.ok for r in registry.verify()) and all(r.ok for r in registry.verify_publications())
    listing = registry.publisher.list_path(target)
    assert signature_path(listing).is_file()
    evil = tmp_path / "evil"
    shutil.copytree(registry.publisher.adapter_dir("triage-v1"), evil)
    shutil.copy(registry.publisher.adapter_dir("discharge-v1") / "adapter_model.safetensors", evil)
    text_ = listing.read_text().replace(str(registry.publisher.adapter_dir("triage-v1")), str(evil))
    if target == "embedded":
        data = json.loads(text_)
        weights = hashlib.sha256((evil / "adapter_model.safetensors").read_bytes()).hexdigest()
        data["adapters"][[a["id"] for a in data["adapters"]].index("triage-v1")]["fingerprint"] = weights
        text_ = json.dumps(data)
    listing.write_text(text_)
    results = {f"{r.name} v{r.version}": r for r in registry.verify()}
    assert not results[f"{target} list v0"].ok
    assert "not the one the registry signed" in (results[f"{target} list v0"].error or "")
    assert not results["triage v1"].ok and "published list that does not verify" in (results["triage v1"].error or "")
    registry.publish("triage", 1, "embedded" if target != "embedded" else "tgi", OPERATOR)  # re-renders its own
    assert not all(r.ok for r in registry.verify_publications())  # the edited list is still refused


def test_verify_refuses_a_list_re_signed_with_another_key(
    registry: Registry, make_run: RunFactory, tmp_path: Path
) -> None:
    """A serving host that re-signs an edited list with a key of its own is refused: the registry's key decides."""
    from appliance.keys import LocalKeyService
    from appliance.serving import PUBLICATION_KEY, sign_publication, signature_path

    _approved(registry, make_run, "triage")
    registry.publish("triage", 1, "embedded", OPERATOR)
    listing = registry.publisher.list_path("embedded")
    forger = LocalKeyService(tmp_path / "keystore")
    signature_path(listing).write_bytes(
        sign_publication(lambda m: forger.sign(PUBLICATION_KEY, m), "embedded", listing.read_bytes(), {})
    )
    [bad] = [r for r in registry.verify_publications() if not r.ok]
    assert bad.name == "embedded list" and "does not verify" in (bad.error or "")

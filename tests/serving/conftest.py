"""Serving fixtures: tiny LoRA adapters made with peft, the embedded engine, and that engine on a loopback port.

Real TGI and vLLM need a GPU and their own binaries, so the clients for them are tested against the embedded
engine, which speaks the same protocols.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ADAPTER_IDS = ("triage-v1", "notes-v1", "coding-v1")


def make_adapter(base: Path, out: Path, seed: int, *, r: int = 4) -> str:
    """A random-init LoRA adapter (B non-zero, so adapters really differ) saved in peft format; its fingerprint."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # make the adapters' effect large enough to change greedy tokens on a tiny model
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    peft_model.save_pretrained(out)
    return hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()


def config_digest(adapter_dir: Path) -> str:
    """SHA-256 of an adapter's adapter_config.json bytes (what the registry publishes as ``config_sha256``)."""
    return hashlib.sha256((adapter_dir / "adapter_config.json").read_bytes()).hexdigest()


_PUBLISHER_KEYS: list[Any] = []


def publisher_keys() -> Any:
    """The test registry's key service (a local keystore in a temporary directory, one per test process)."""
    if not _PUBLISHER_KEYS:
        import tempfile

        from appliance.keys import LocalKeyService

        _PUBLISHER_KEYS.append(LocalKeyService(Path(tempfile.mkdtemp(prefix="publisher-keys-")) / "keystore"))
    return _PUBLISHER_KEYS[0]


def publication_keys() -> dict[int, bytes]:
    """The test registry's publication public keys (what a serving host pins)."""
    from appliance.serving import PUBLICATION_KEY

    return dict(publisher_keys().public_keys(PUBLICATION_KEY))


def pin_publication_keys(path: Path) -> Path:
    """Write the pinned public key file (as `appliance keyservice public-keys registry-signing --out` does)."""
    import base64

    from appliance.serving import PUBLICATION_KEY

    document = {
        "key": PUBLICATION_KEY,
        "algorithm": "ed25519",
        "public_keys": {str(v): base64.b64encode(k).decode() for v, k in publication_keys().items()},
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def sign_list(path: Path, target: str = "embedded", digests: dict[str, dict[str, Any]] | None = None) -> None:
    """Sign a published list as the registry does (its digests taken from the embedded list unless given)."""
    from appliance.serving import PUBLICATION_KEY, sign_publication, signature_path

    data = path.read_bytes()
    if digests is None:
        digests = {
            e["id"]: {"fingerprint": e["fingerprint"], "config_sha256": e["config_sha256"], "path": e["path"]}
            for e in json.loads(data)["adapters"]
        }
    keys = publisher_keys()
    signature_path(path).write_bytes(sign_publication(lambda m: keys.sign(PUBLICATION_KEY, m), target, data, digests))


def write_adapter_list(
    path: Path, adapters: dict[str, tuple[Path, str]], configs: dict[str, str] | None = None, *, signed: bool = True
) -> Path:
    """The embedded adapter list in the registry's publish format (contracts.md), signed with the test registry's
    key (``signed``); each config digest is ``configs[id]`` when given, else that of the adapter_config.json on
    disk now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    configs = configs or {}
    entries = [
        {
            "id": aid,
            "name": aid.rsplit("-v", 1)[0],
            "version": 1,
            "path": str(p),
            "fingerprint": fp,
            "config_sha256": configs.get(aid) or config_digest(p),
        }
        for aid, (p, fp) in adapters.items()
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"adapters": entries}), encoding="utf-8")
    tmp.replace(path)
    if signed:
        sign_list(path)
    return path


@pytest.fixture(scope="session")
def lora_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Three different LoRA adapters on the tiny model: id -> (directory, fingerprint)."""
    root = tmp_path_factory.mktemp("adapters")
    return {aid: (root / aid, make_adapter(tiny_model, root / aid, seed)) for seed, aid in enumerate(ADAPTER_IDS)}


@pytest.fixture(scope="session")
def adapter_list(lora_adapters: dict[str, tuple[Path, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published embedded adapter list naming the three adapters."""
    return write_adapter_list(tmp_path_factory.mktemp("serving") / "embedded" / "adapters.json", lora_adapters)


def start_engine(base: Path, listing: Path, *, max_tokens: tuple[int, int] | None = (256, 512), **options: Any) -> Any:
    """The embedded engine in-process on the CPU over the published ``listing``, which it re-reads on a reload.

    ``max_tokens``: its (input, total) token limits (None: the engine's own); ``options`` go to ``Engine.start``
    (``max_batch_size``, ``max_queue``).
    """
    from appliance.serving import read_embedded_list
    from appliance.serving.engine import Engine, Limits

    if max_tokens is not None:
        options["limits"] = Limits(max_input_tokens=max_tokens[0], max_total_tokens=max_tokens[1])
    return Engine.start(
        base, read_embedded_list(listing), device="cpu", adapter_source=lambda: read_embedded_list(listing), **options
    )


@pytest.fixture(scope="session")
def engine(tiny_model: Path, adapter_list: Path) -> Iterator[Any]:
    """The embedded engine on the tiny model with the three adapters loaded from the published list."""
    eng = start_engine(tiny_model, adapter_list, max_batch_size=8, max_queue=32)
    yield eng
    eng.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """uvicorn serving an ASGI app on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def engine_url(engine: Any) -> Iterator[str]:
    """The engine's TGI API on a free loopback port (uvicorn in a thread)."""
    from appliance.serving.engine import create_app

    with ServerThread(create_app(engine)) as server:
        yield server.url

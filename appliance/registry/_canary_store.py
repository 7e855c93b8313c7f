"""Sealed canaries (README.md, "Canary secrets"): opened at ``add`` from the trainer's ``canaries.sealed`` and
re-sealed with the adapter's files as ``canaries.json``; read back, in memory only, for the production probe.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from appliance.canaries import SEALED_FILE, CanaryDocument, check_count, open_document, read_document, render_document
from appliance.errors import NotFound, ValidationFailed
from appliance.protocols import KeyService
from appliance.registry._artifacts import PROBE_FILE
from appliance.registry._context import Context, artifact_of
from appliance.registry._rundir import RunMetadata
from appliance.registry._types import Actor

__all__ = ["CanaryStore", "files_to_seal"]


class CanaryStore:
    """An adapter's canary secrets and prompts, for the production probe (``appliance.monitoring``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def canaries(self, name: str, version: int, actor: Actor) -> CanaryDocument:
        """The canary secrets and prompts of one adapter, decrypted in memory only (for the production probe);
        NotFound when it was registered without sealed canaries. The read is audited (counts only)."""
        ctx = self.ctx
        with ctx.db.session("reading an adapter's canaries") as s:
            adapter = ctx.get(s, name, version)
            artifact = artifact_of(adapter)
            if PROBE_FILE not in artifact["files"]:
                raise NotFound(f"adapter {name} v{version} was registered without sealed canaries")
            artifact["files"] = {PROBE_FILE: artifact["files"][PROBE_FILE]}
            document = read_document(dict(ctx.artifacts.open(**artifact))[PROBE_FILE])
            ctx.record(
                "registry.canary_read", "canary_read", actor, adapter, details={"canaries": len(document.canaries)}
            )
        return document


def files_to_seal(keys: KeyService, files: Mapping[str, Path], meta: RunMetadata) -> dict[str, Path | bytes]:
    """The run's files, its sealed canaries opened (``canaries`` unwrap: the trainer cannot) and re-sealed as
    ``canaries.json`` with the adapter; the plaintext stays in memory. A run whose metadata says its canaries
    were sealed must bring them (ValidationFailed otherwise); a file sealed for another run is refused."""
    out: dict[str, Path | bytes] = {k: v for k, v in files.items() if k not in (SEALED_FILE, PROBE_FILE)}
    promised = bool(meta.canaries.model_extra and meta.canaries.model_extra.get("sealed"))
    if SEALED_FILE not in files:
        if promised:
            raise ValidationFailed(f"the run's metadata says its canaries were sealed, but {SEALED_FILE} is missing")
        return out
    document = open_document(keys, meta.run_id, files[SEALED_FILE].read_bytes())
    check_count(document, meta.canaries.count)
    out[PROBE_FILE] = render_document(document.run_id, document.candidates, document.canaries)
    return out

"""Witnesses keep each chain's signed head outside the store (a real OpenBao KV v2 and a file witness): a chain cut
back to an earlier clean stop, or deleted, is reported by `appliance audit verify` and refused by the writer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.audit import open_audit_log
from appliance.audit._witness import FileWitness, VaultWitness, WitnessedCheckpoint
from appliance.cli import app
from appliance.config import Settings, load_settings
from appliance.errors import AuditUnavailable, IntegrityViolation
from appliance.keys import AUDIT_HMAC, AUDIT_SIGNING
from appliance.keys._vault import VaultKeyService
from tests.audit.conftest import make_event
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer, _shutdown, start_openbao

pytestmark = pytest.mark.openbao

POLICIES = REPO_ROOT / "policies" / "vault"


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBaoServer]:
    """An OpenBao of this module's own (the policies assume the 'appliance' prefix), with the audit keys made by
    root and the audit-writer and auditor policies loaded."""
    server = start_openbao()
    try:
        root = server.client()
        for stem in ("audit-writer", "auditor"):
            root.sys.create_or_update_acl_policy(
                name=f"appliance-{stem}", policy=(POLICIES / f"{stem}.hcl").read_text()
            )
        VaultKeyService(root).create(AUDIT_HMAC)
        root.sys.enable_auth_method("approle")
        yield server
    finally:
        _shutdown(server)


def _token(server: OpenBaoServer, policy: str) -> str:
    return str(server.client().auth.token.create(policies=[policy], ttl="20m")["auth"]["client_token"])


def provision_writer(server: OpenBaoServer, writer: str) -> tuple[str, str]:
    """What provisioning does for a service that writes a chain: its signing key (made by the operator), an AppRole
    with appliance-audit-writer, and an identity entity whose metadata ``audit_writer`` names the writer (the
    policy's template); returns the AppRole's role id and a secret id."""
    root = server.client()
    VaultKeyService(root).create(f"{AUDIT_SIGNING}-{writer}", "ed25519")
    accessor = root.sys.list_auth_methods()["data"]["approle/"]["accessor"]
    role = f"appliance-{writer}"
    root.auth.approle.create_or_update_approle(role, token_policies=["appliance-audit-writer"], token_ttl="20m")
    role_id = root.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    root.secrets.identity.create_or_update_entity_by_name(name=role, metadata={"audit_writer": writer})
    entity_id = root.secrets.identity.read_entity_by_name(role)["data"]["id"]
    root.secrets.identity.create_or_update_entity_alias(name=role_id, canonical_id=entity_id, mount_accessor=accessor)
    return role_id, secret_id


@dataclass
class Site:
    """Settings of one appliance whose audit writer signs through OpenBao with both witnesses configured."""

    writer: Settings
    auditor_env: dict[str, str]
    witness_dir: Path
    server: OpenBaoServer
    writer_keys: VaultKeyService


@pytest.fixture
def site(bao: OpenBaoServer, tmp_path: Path) -> Site:
    import secrets

    witness_dir = tmp_path / "other-host" / "witness"
    writer_id = f"w{secrets.token_hex(4)}"
    role_id, secret_id = provision_writer(bao, writer_id)
    keys = {"backend": "vault", "vault_addr": bao.addr, "vault_role_id": role_id, "vault_secret_id": secret_id}
    audit = {"witness_dir": str(witness_dir), "witness_vault": True, "writer_id": writer_id}
    data_dir = tmp_path / "var"
    writer = load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", keys=keys, audit=audit)
    auditor_env = {
        "APPLIANCE_DATA_DIR": str(data_dir),
        "APPLIANCE_POLICIES_DIR": str(REPO_ROOT / "policies"),
        "APPLIANCE_KEYS__BACKEND": "vault",
        "APPLIANCE_KEYS__VAULT_ADDR": bao.addr,
        "APPLIANCE_KEYS__VAULT_TOKEN": _token(bao, "appliance-auditor"),  # verify runs as the auditor
        "APPLIANCE_AUDIT__WITNESS_DIR": str(witness_dir),
        "APPLIANCE_AUDIT__WITNESS_VAULT": "true",
        "APPLIANCE_AUDIT__WRITER_ID": writer.audit.writer_id,
    }
    writer_keys = VaultKeyService.from_settings(writer.keys)  # logged in through the AppRole, as the writer is
    return Site(writer, auditor_env, witness_dir, bao, writer_keys)


def _session(settings: Settings, n: int) -> tuple[int, str]:
    """Open the log, record n events, close it (a clean stop); the chain's last seq and hash."""
    writer = open_audit_log(settings)
    try:
        for i in range(n):
            writer.record_sync(make_event(request_id=f"r-{i}"))
    finally:
        writer.close_sync()
    return writer.head.seq, writer.head.hash


def _witnesses(site: Site) -> tuple[FileWitness, VaultWitness]:
    return FileWitness(site.witness_dir), VaultWitness(site.writer_keys)


def _verify(site: Site, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in site.auditor_env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(app, ["audit", "verify"])


def test_each_checkpoint_reaches_both_witnesses(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final signed checkpoint of a session is held by the file witness and by OpenBao; verify agrees."""
    import json

    seq, _ = _session(site.writer, 5)
    origin = site.writer.audit.writer_id
    file_witness, vault_witness = _witnesses(site)
    held = file_witness.latest(origin)
    assert held is not None and held == vault_witness.latest(origin)
    [segment] = (site.writer.audit_dir / origin).glob("segment-*.jsonl")
    stop_checkpoint = json.loads(segment.read_bytes().splitlines()[-1])
    assert stop_checkpoint["seq"] == seq and stop_checkpoint["type"] == "audit.checkpoint"
    assert (held.size, held.root, held.signature) == (
        seq - 1,
        stop_checkpoint["details"]["signed_hash"],
        stop_checkpoint["details"]["signature"],
    )
    assert len(vault_witness.sizes(origin)) >= 2  # start and stop: one key per checkpoint, none overwritten
    result = _verify(site, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_a_chain_cut_back_to_an_earlier_clean_stop_is_reported_and_refused(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut the store back to the end of an earlier session (a clean stop: undetectable from the store alone):
    verify reports the chain shorter than witnessed, and a writer refuses to start on it."""
    origin = site.writer.audit.writer_id
    _session(site.writer, 4)
    chain_dir = site.writer.audit_dir / origin
    earlier = {p.name: p.read_bytes() for p in chain_dir.glob("segment-*.jsonl")}
    _session(site.writer, 6)
    for path in chain_dir.glob("segment-*.jsonl"):
        if path.name in earlier:
            path.write_bytes(earlier[path.name])
        else:
            path.unlink()
    result = _verify(site, monkeypatch)
    assert result.exit_code != 0
    assert "truncated" in result.output and "cut" in result.output
    with pytest.raises(AuditUnavailable, match="shorter than what was witnessed"):
        open_audit_log(site.writer)


def test_a_deleted_chain_is_reported_and_refused(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete the whole chain: verify reports it absent from the store though witnessed; a writer refuses it."""
    origin = site.writer.audit.writer_id
    _session(site.writer, 3)
    shutil.rmtree(site.writer.audit_dir / origin)
    result = _verify(site, monkeypatch)
    assert result.exit_code != 0
    assert "deleted" in result.output
    with pytest.raises(AuditUnavailable, match="shorter than what was witnessed"):
        open_audit_log(site.writer)


@pytest.mark.parametrize("which", ["file", "vault"])
def test_a_witness_refuses_an_older_or_inconsistent_checkpoint(site: Site, which: str) -> None:
    """tlog-witness semantics: a smaller size, or the same size with another root, is refused; the same
    checkpoint again is accepted (idempotent); a larger one is taken."""
    witness = _witnesses(site)[0 if which == "file" else 1]
    origin = site.writer.audit.writer_id + ".2"  # a second lane of the writer: its own identity's too
    head = WitnessedCheckpoint(origin, 10, "a" * 64, "ed25519:v1:" + "A" * 86 + "==")
    witness.add(head)
    with pytest.raises(IntegrityViolation, match="refused a checkpoint through seq 9"):
        witness.add(WitnessedCheckpoint(origin, 9, "b" * 64, head.signature))
    with pytest.raises(IntegrityViolation, match="another hash"):
        witness.add(WitnessedCheckpoint(origin, 10, "c" * 64, head.signature))
    witness.add(head)
    witness.add(WitnessedCheckpoint(origin, 12, "d" * 64, head.signature))
    latest = witness.latest(origin)
    assert latest is not None and (latest.size, latest.root) == (12, "d" * 64)


def test_the_writer_policy_cannot_overwrite_or_delete_a_witnessed_checkpoint(site: Site) -> None:
    """Under appliance-audit-writer a witnessed checkpoint cannot be overwritten, deleted, destroyed or have its
    metadata removed (the host's root holds that token, and still cannot rewrite the witness)."""
    import hvac.exceptions

    _session(site.writer, 2)
    origin = site.writer.audit.writer_id
    _, vault_witness = _witnesses(site)
    size = vault_witness.sizes(origin)[-1]
    path = f"appliance/audit-witness/{origin}/{origin}/{size:020d}"
    writer = site.writer_keys._client.secrets.kv.v2
    forged = {"origin": origin, "size": str(size), "root": "0" * 64, "signature": "x"}
    attempts = [
        lambda: writer.create_or_update_secret(path, secret=forged, mount_point="secret"),
        lambda: writer.delete_latest_version_of_secret(path, mount_point="secret"),
        lambda: writer.delete_secret_versions(path, versions=[1], mount_point="secret"),
        lambda: writer.destroy_secret_versions(path, versions=[1], mount_point="secret"),
        lambda: writer.delete_metadata_and_all_versions(path, mount_point="secret"),
    ]
    for attempt in attempts:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    assert vault_witness.read(origin, size).root != "0" * 64
    with pytest.raises(IntegrityViolation, match="another hash"):  # through the witness too: refused, not written
        vault_witness.add(WitnessedCheckpoint(origin, size, "0" * 64, "ed25519:v1:" + "A" * 86 + "=="))


def test_a_writer_signs_only_for_its_own_chain(site: Site, bao: OpenBaoServer) -> None:
    """One key per writer: under the templated policy a writer signs with its own key only, never with another
    writer's or the old shared one, and cannot add witnessed checkpoints under another writer."""
    from appliance.errors import VaultForbidden

    other = f"{site.writer.audit.writer_id}x"
    provision_writer(bao, other)  # another service's writer and key
    own = site.writer_keys.sign(f"{AUDIT_SIGNING}-{site.writer.audit.writer_id}", b"checkpoint")
    assert own.startswith(b"ed25519:v1:")
    with pytest.raises(VaultForbidden):
        site.writer_keys.sign(f"{AUDIT_SIGNING}-{other}", b"forged checkpoint of another chain")
    with pytest.raises(VaultForbidden):
        site.writer_keys.sign(AUDIT_SIGNING, b"forged checkpoint with the shared key")
    forged = WitnessedCheckpoint(other, 99, "e" * 64, "ed25519:v1:" + "A" * 86 + "==")
    with pytest.raises(AuditUnavailable):
        VaultWitness(site.writer_keys).add(forged)


def test_each_chain_verifies_under_its_own_writers_key_only(site: Site, bao: OpenBaoServer) -> None:
    """Checkpoints are signed with the writer's own key (named in the record): they verify under it and not under
    another writer's key, so a key that signs one chain cannot vouch for another."""
    import json

    from appliance.audit._checkpoint import ChainKeys
    from appliance.audit._sinks.files import FileStore
    from appliance.audit._verify import verify_chain

    _session(site.writer, 2)
    origin = site.writer.audit.writer_id
    provision_writer(bao, f"{origin}y")
    store = FileStore(site.writer.audit_dir)
    last = json.loads(b"".join(d for _, d in store.read(origin)).splitlines()[-1])
    assert last["details"]["key"] == f"{AUDIT_SIGNING}-{origin}"
    resolve = ChainKeys(site.writer_keys)
    assert verify_chain(origin, store.read(origin), public_keys=resolve(origin)).ok
    crossed = verify_chain(origin, store.read(origin), public_keys=resolve(f"{origin}y"))
    assert {p.kind for p in crossed.problems} == {"bad_signature"}

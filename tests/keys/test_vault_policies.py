"""policies/vault/*.hcl loaded into a real OpenBao and exercised with an AppRole login per role."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import VaultForbidden
from appliance.keys import ARTIFACTS, AUDIT_HMAC, AUDIT_SIGNING, CANARIES, CHECKPOINTS, open_key_service
from appliance.keys._vault import VaultKeyService
from appliance.serving import PUBLICATION_KEY
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer

pytestmark = pytest.mark.openbao

POLICY_DIR = REPO_ROOT / "policies" / "vault"
# The deployment: each service's AppRole carries its own policy, plus audit-writer where it writes an audit chain.
ROLE_POLICIES = {
    "gateway": ["gateway", "audit-writer"],
    "trainer": ["trainer", "audit-writer"],
    "registry": ["registry", "audit-writer"],
    "operator": ["operator"],
    "auditor": ["auditor"],
}
ROLES = list(ROLE_POLICIES)
WRITERS = [role for role, policies in ROLE_POLICIES.items() if "audit-writer" in policies]


def provision(server: OpenBaoServer) -> None:
    """Load every policy as 'appliance-<file stem>' and make one AppRole role per service with its policies."""
    root = server.client()
    for path in sorted(POLICY_DIR.glob("*.hcl")):
        root.sys.create_or_update_acl_policy(name=f"appliance-{path.stem}", policy=path.read_text())
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    accessor = root.sys.list_auth_methods()["data"]["approle/"]["accessor"]
    for role, policies in ROLE_POLICIES.items():
        root.auth.approle.create_or_update_approle(
            f"appliance-{role}",
            token_policies=[f"appliance-{p}" for p in policies],
            token_ttl="10m",
            secret_id_ttl="10m",
        )
        if role in WRITERS:  # audit-writer is templated on the identity's audit_writer: one writer, one key
            role_id = root.auth.approle.read_role_id(f"appliance-{role}")["data"]["role_id"]
            root.secrets.identity.create_or_update_entity_by_name(
                name=f"appliance-{role}", metadata={"audit_writer": role}
            )
            entity_id = root.secrets.identity.read_entity_by_name(f"appliance-{role}")["data"]["id"]
            root.secrets.identity.create_or_update_entity_alias(
                name=role_id, canonical_id=entity_id, mount_accessor=accessor
            )


def login_as(server: OpenBaoServer, role: str, data_dir: Path) -> VaultKeyService:
    """The key service the appliance opens for a role: AppRole credentials in settings, prefix 'appliance'."""
    root = server.client()
    role_id = root.auth.approle.read_role_id(f"appliance-{role}")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(f"appliance-{role}")["data"]["secret_id"]
    settings = load_settings(
        data_dir=data_dir,
        keys={"backend": "vault", "vault_addr": server.addr, "vault_role_id": role_id, "vault_secret_id": secret_id},
    )
    service = open_key_service(settings)
    assert isinstance(service, VaultKeyService)
    return service


@dataclass
class Estate:
    """The provisioned server, a service per role, and material made by root to operate on."""

    services: dict[str, VaultKeyService]
    checkpoint_key: bytes
    artifact_key: bytes
    canary_key: bytes
    signature: bytes


@pytest.fixture(scope="module")
def estate(openbao: OpenBaoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    """Policies and roles loaded, the four well-known keys created by root, one AppRole login per role."""
    provision(openbao)
    data_dir = tmp_path_factory.mktemp("policy-var")
    root = VaultKeyService(openbao.client())
    _, checkpoint_key = root.data_key(CHECKPOINTS)
    _, artifact_key = root.data_key(ARTIFACTS)
    _, canary_key = root.data_key(CANARIES)
    root.hmac(AUDIT_HMAC, b"x")
    for writer in WRITERS:
        root.create(f"{AUDIT_SIGNING}-{writer}", "ed25519")
    root.sign(AUDIT_SIGNING, b"checkpoint")  # the old shared key, still there: nobody may sign with it
    signature = root.sign(GATEWAY_SIGNING, b"checkpoint")
    root.create(PUBLICATION_KEY, "ed25519")
    root.put_secret("gateway/session", {"secret": "session-secret"})
    root.put_secret("registry/db", {"password": "db-password"})
    yield Estate(
        {role: login_as(openbao, role, data_dir) for role in ROLES}, checkpoint_key, artifact_key, canary_key, signature
    )


GATEWAY_SIGNING = f"{AUDIT_SIGNING}-gateway"
TRAINER_SIGNING = f"{AUDIT_SIGNING}-trainer"

OPERATIONS: dict[str, Callable[[VaultKeyService, Estate], object]] = {
    "checkpoints.data_key": lambda s, e: s.data_key(CHECKPOINTS),
    "checkpoints.unwrap": lambda s, e: s.unwrap(CHECKPOINTS, e.checkpoint_key),
    "artifacts.data_key": lambda s, e: s.data_key(ARTIFACTS),
    "artifacts.unwrap": lambda s, e: s.unwrap(ARTIFACTS, e.artifact_key),
    "artifacts.rewrap": lambda s, e: s.rewrap(ARTIFACTS, e.artifact_key),
    "canaries.data_key": lambda s, e: s.data_key(CANARIES),
    "canaries.unwrap": lambda s, e: s.unwrap(CANARIES, e.canary_key),
    "audit.hmac": lambda s, e: s.hmac(AUDIT_HMAC, b"prompt"),
    "audit.sign.shared": lambda s, e: s.sign(AUDIT_SIGNING, b"checkpoint"),
    "audit.sign.gateway": lambda s, e: s.sign(GATEWAY_SIGNING, b"checkpoint"),
    "audit.sign.trainer": lambda s, e: s.sign(TRAINER_SIGNING, b"checkpoint"),
    "audit.verify.gateway": lambda s, e: s.verify(GATEWAY_SIGNING, b"checkpoint", e.signature),
    "audit.public_keys.gateway": lambda s, e: s.public_keys(GATEWAY_SIGNING),
    "publication.sign": lambda s, e: s.sign(PUBLICATION_KEY, b"adapter list"),
    "publication.public_keys": lambda s, e: s.public_keys(PUBLICATION_KEY),
    "key.rotate": lambda s, e: s.rotate(AUDIT_HMAC),
    "key.create": lambda s, e: s.create(f"made-{secrets.token_hex(3)}"),
    "secret.gateway.read": lambda s, e: s.get_secret("gateway/session"),
    "secret.registry.read": lambda s, e: s.get_secret("registry/db"),
    "secret.write": lambda s, e: s.put_secret("gateway/session", {"secret": "session-secret"}),
}

AUDIT_WRITER = {"audit.public_keys.gateway"}  # every writer reads every writer's public keys; signs with its own
ALLOWED: dict[str, set[str]] = {
    "gateway": {"audit.hmac", "secret.gateway.read", "audit.sign.gateway", "audit.verify.gateway"} | AUDIT_WRITER,
    "trainer": {"checkpoints.data_key", "checkpoints.unwrap", "canaries.data_key", "audit.sign.trainer"} | AUDIT_WRITER,
    "registry": {"artifacts.data_key", "artifacts.unwrap", "artifacts.rewrap", "canaries.unwrap", "publication.sign"}
    | {"publication.public_keys"}
    | AUDIT_WRITER,
    "operator": {
        "artifacts.rewrap",
        "audit.public_keys.gateway",
        "publication.public_keys",
        "key.rotate",
        "key.create",
        "secret.write",
    },
    "auditor": {"audit.verify.gateway", "audit.public_keys.gateway"},
}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_exactly_its_operations(estate: Estate, role: str) -> None:
    """Every role can do what its policy grants and gets VaultForbidden for every other key operation."""
    service = estate.services[role]
    allowed, refused = [], []
    for name, operation in OPERATIONS.items():
        try:
            operation(service, estate)
        except VaultForbidden:
            refused.append(name)
        else:
            allowed.append(name)
    assert set(allowed) == ALLOWED[role]
    assert set(refused) == set(OPERATIONS) - ALLOWED[role]


def test_gateway_cannot_decrypt_training_checkpoints(estate: Estate) -> None:
    """The gateway's token cannot unwrap a checkpoint data key, nor an adapter's."""
    with pytest.raises(VaultForbidden, match="unwrap data key"):
        estate.services["gateway"].unwrap(CHECKPOINTS, estate.checkpoint_key)
    with pytest.raises(VaultForbidden):
        estate.services["gateway"].unwrap(ARTIFACTS, estate.artifact_key)


def test_services_cannot_use_each_others_keys(estate: Estate) -> None:
    """The trainer cannot unwrap adapters or compute prompt digests; the registry cannot unwrap checkpoints."""
    with pytest.raises(VaultForbidden):
        estate.services["trainer"].unwrap(ARTIFACTS, estate.artifact_key)
    with pytest.raises(VaultForbidden, match="hmac"):
        estate.services["trainer"].hmac(AUDIT_HMAC, b"a prompt")
    with pytest.raises(VaultForbidden):
        estate.services["registry"].unwrap(CHECKPOINTS, estate.checkpoint_key)


def test_trainer_policy_alone_cannot_sign_audit_checkpoints(openbao: OpenBaoServer, estate: Estate) -> None:
    """trainer.hcl by itself grants no signing: only the separately attached audit-writer policy does."""
    root = openbao.client()
    token = root.auth.token.create(policies=["appliance-trainer"], ttl="5m")["auth"]["client_token"]
    trainer_only = VaultKeyService(openbao.client(token))
    trainer_only.data_key(CHECKPOINTS)
    with pytest.raises(VaultForbidden, match="sign"):
        trainer_only.sign(TRAINER_SIGNING, b"forged checkpoint")


def test_operator_rotates_but_never_sees_plaintext(estate: Estate) -> None:
    """The operator can rotate and rewrap, but unwrapping or making a data key is refused."""
    operator = estate.services["operator"]
    operator.rotate(ARTIFACTS)
    rewrapped = operator.rewrap(ARTIFACTS, estate.artifact_key)
    assert rewrapped != estate.artifact_key
    with pytest.raises(VaultForbidden):
        operator.unwrap(ARTIFACTS, rewrapped)
    with pytest.raises(VaultForbidden):
        operator.data_key(ARTIFACTS)
    assert estate.services["registry"].unwrap(ARTIFACTS, rewrapped) == estate.services["registry"].unwrap(
        ARTIFACTS, estate.artifact_key
    )


def test_operator_status_lists_keys_others_cannot(estate: Estate) -> None:
    """The operator's status lists the appliance keys; a service's status says it may not list them."""
    names = {k.name for k in estate.services["operator"].status().keys}
    assert {CHECKPOINTS, ARTIFACTS, AUDIT_HMAC, AUDIT_SIGNING} <= names
    gateway_status = estate.services["gateway"].status()
    assert gateway_status.keys == [] and "may not list" in (gateway_status.detail or "")


def test_missing_key_and_no_right_to_create_it_is_a_clear_error(openbao_private: OpenBaoServer, tmp_path: Path) -> None:
    """A service whose key the operator has not created yet is told so, and nothing is created."""
    provision(openbao_private)
    trainer = login_as(openbao_private, "trainer", tmp_path)
    with pytest.raises(VaultForbidden, match="operator must create it"):
        trainer.data_key(CHECKPOINTS)
    keys = VaultKeyService(openbao_private.client()).status().keys
    assert keys == []


def test_every_policy_file_has_a_header_and_is_exercised() -> None:
    """Each policy file starts with a comment saying what the role may and may not do, and a role uses it."""
    stems = {p.stem for p in POLICY_DIR.glob("*.hcl")}
    assert stems == {p for policies in ROLE_POLICIES.values() for p in policies}
    for stem in stems:
        text = (POLICY_DIR / f"{stem}.hcl").read_text()
        assert text.startswith(f"# appliance-{stem}:")
        assert "# May:" in text and "# May not:" in text


def test_approle_logs_in_again_when_its_token_is_revoked(
    openbao: OpenBaoServer, estate: Estate, tmp_path: Path
) -> None:
    """A revoked or expired AppRole token is replaced by a fresh login once; a policy refusal is not retried."""
    trainer = login_as(openbao, "trainer", tmp_path)
    first = trainer._client.token
    trainer.data_key(CHECKPOINTS)
    with pytest.raises(VaultForbidden):
        trainer.unwrap(ARTIFACTS, estate.artifact_key)
    assert trainer._client.token == first  # a policy refusal does not log in again
    openbao.client().auth.token.revoke(first)
    plaintext, wrapped = trainer.data_key(CHECKPOINTS)
    assert trainer._client.token != first
    assert trainer.unwrap(CHECKPOINTS, wrapped) == plaintext

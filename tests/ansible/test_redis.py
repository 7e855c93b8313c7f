"""The redis role's configuration and ACL file, rendered by Ansible from the role's templates (its defaults plus test
values: a throwaway CA and server certificate, loopback, a free port), start the real redis-server (Debian's
/usr/bin/redis-server, as the redis account where the test runs as root, from files root:redis 0640 as the role
installs them). Then: no plaintext port, TLS verified against the CA, the default user cannot log in, the gateway's
user runs the gateway's real store (appliance.gateway.state -> state_redis, opened from the appliance.toml and
secrets file the appliance role renders with appliance_state_store: redis) and is refused everything else. Also:
the role's configuration check refuses broken candidates, and the hospital inventory's ruleset opens Redis to the
gateway hosts only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.ansible._render import ROLES, Template, render, run_play, template_task
from tests.fixtures.processes import stop_process

pytestmark = [pytest.mark.ansible, pytest.mark.redis]

redis = pytest.importorskip("redis")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

REDIS_SERVER = Path("/usr/bin/redis-server")
PREFIX = "appliance:gw:"  # the role's default redis_gateway_key_prefix (and gateway.redis_key_prefix's)
USER = "appliance-gw"  # the role's default redis_gateway_user
MAXMEMORY = "4mb"  # small, so that the memory test fills it quickly


def _render_local(out: Path, work: Path, extra: dict[str, object]) -> str:
    """The redis role's files and the appliance role's settings for a local test server (their defaults and vars at
    role precedence; their tasks are skipped); ansible-playbook's output."""
    version = {
        "name": "Read the server's version as the role does",
        "ansible.builtin.include_tasks": {
            "file": str(ROLES / "redis/tasks/version.yml"),
            "apply": {"tags": ["render"]},
        },
        "tags": ["render"],
    }
    tasks = [
        version,
        template_task("Render the ACL file", "redis/templates/users.acl.j2", "{{ redis_acl_file }}", no_log=True),
        template_task("Render the server configuration", "redis/templates/redis.conf.j2", "{{ redis_config_file }}"),
        template_task("Render the check", "redis/templates/redis-check.py.j2", f"{out}/redis-check", mode="0755"),
        template_task("Render the settings", "appliance/templates/appliance.toml.j2", f"{out}/appliance.toml"),
        template_task(
            "Render the secrets file", "appliance/templates/appliance.env.j2", f"{out}/appliance.env", no_log=True
        ),
    ]
    done = run_play("localhost,", "localhost", ["redis", "appliance"], tasks, work, extra=extra)
    return done.stdout + done.stderr


# The hospital inventory's rulesets and gateway settings.
HOSPITAL_FILES = [
    Template("network/templates/nftables.conf.j2", "nft"),
    Template("appliance/templates/appliance.toml.j2", "toml"),
    Template("appliance/templates/appliance.env.j2", "env", no_log=True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a server and a client certificate it signed, and an unrelated CA with a client certificate
    of its own (test only)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("redis test CA (test only)")
    other_key, other_cert = ca("another CA (test only)")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("redis test server (test only)"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def client(
        cn: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        return key, cert

    client_key, client_cert = client("gateway-1 (test only)", ca_key, ca_cert)
    stranger_key, stranger_cert = client("stranger (test only)", other_key, other_cert)

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = {
        "server.pem": pem(server_cert),
        "server.key": key_pem(server_key),
        "ca.pem": pem(ca_cert),
        "other-ca.pem": pem(other_cert),
        "other-ca.key": key_pem(other_key),
        "client.pem": pem(client_cert),
        "client.key": key_pem(client_key),
        "stranger.pem": pem(stranger_cert),
        "stranger.key": key_pem(stranger_key),
    }
    paths = {}
    for file_name, content in files.items():
        path = directory / file_name
        path.touch(mode=0o600)
        path.write_bytes(content)
        paths[file_name] = path
    return paths


@dataclass
class Server:
    port: int
    password: str = field(repr=False)  # never shown in a failure report
    ca: Path
    other_ca: Path
    client_cert: Path  # issued by the CA (mutual TLS is on in this test)
    client_key: Path
    stranger_cert: Path  # issued by the other CA
    stranger_key: Path
    config: Path
    acl: Path
    check_script: Path
    toml: Path
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]
    render_output: str
    as_redis: bool

    def client(self, **kwargs: object) -> redis.Redis:
        """A TLS client verified against the test CA; the gateway's user unless told otherwise."""
        args: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.port,
            "ssl": True,
            "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert),
            "ssl_keyfile": str(self.client_key),
            "username": USER,
            "password": self.password,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            "retry": Retry(NoBackoff(), 0),  # a refusal is the answer: no retries with back-off
        }
        args.update(kwargs)
        return redis.Redis(**args)


def _chown_for_redis(path: Path, mode: int) -> None:
    account = pwd.getpwnam("redis")
    os.chown(path, 0, account.pw_gid)
    path.chmod(mode)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The rendered files, and redis-server started from them (as the unit does, with its pid file in the test's
    directory); stopped and removed afterwards."""
    if not REDIS_SERVER.exists():
        pytest.fail(f"{REDIS_SERVER} is missing: install Debian's redis-server (make system-deps)")
    as_redis = os.geteuid() == 0
    if as_redis:
        try:
            pwd.getpwnam("redis")
        except KeyError:
            pytest.fail("the redis account is missing: install Debian's redis-server (make system-deps)")
    # Under /tmp (traversable), so that the redis account can reach its files as on a host.
    work = Path(tempfile.mkdtemp(prefix="appliance-redis-test-", dir="/tmp"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        src = work / "control-node"
        src.mkdir(mode=0o700)
        pki = _pki(src)
        config_dir, data_dir, out = work / "etc", work / "data", work / "out"
        for d in (config_dir, config_dir / "tls", data_dir, out):
            d.mkdir(mode=0o700)
        password = secrets.token_urlsafe(32) + "/+%@:~"  # URL-special characters: the role must encode them
        port = _free_port()
        extra = {
            "redis_config_dir": str(config_dir),
            "redis_data_dir": str(data_dir),
            "redis_bind_addresses": ["127.0.0.1"],
            "redis_tls_port": port,
            "redis_tls_cert_src": str(pki["server.pem"]),
            "redis_tls_key_src": str(pki["server.key"]),
            "redis_tls_ca_src": str(pki["ca.pem"]),
            "redis_tls_auth_clients": True,
            "redis_gateway_password": password,
            "redis_maxmemory": MAXMEMORY,
            "appliance_state_store": "redis",
            "appliance_gateway_workers": 2,
            "appliance_redis_host": "127.0.0.1",
            "appliance_redis_ca_cert": str(config_dir / "tls/ca.pem"),
            "appliance_redis_client_cert_src": str(pki["client.pem"]),
            "appliance_redis_client_key_src": str(pki["client.key"]),
            "appliance_redis_client_cert": str(pki["client.pem"]),  # where the role would install them
            "appliance_redis_client_key": str(pki["client.key"]),
            "appliance_data_dir": str(work / "appliance"),
            "appliance_settings": {
                "environment": "production",
                "log_level": "INFO",
                "keys": {"backend": "local"},
                "gateway": {"session_idle_timeout_s": 1},
            },
        }
        render_output = _render_local(out, work, extra)
        for name in ("server.pem", "server.key", "ca.pem"):  # what the role's tls.yml copies
            shutil.copyfile(pki[name], config_dir / "tls" / name)
        files = [config_dir / "redis.conf", config_dir / "users.acl", *(config_dir / "tls").iterdir()]
        if as_redis:  # as the role installs them: root:redis, directories 0750, files 0640
            for d in (config_dir, config_dir / "tls"):
                _chown_for_redis(d, 0o750)
            for f in files:
                _chown_for_redis(f, 0o640)
            account = pwd.getpwnam("redis")
            os.chown(data_dir, account.pw_uid, account.pw_gid)
            work.chmod(0o755)
        log, pidfile = work / "redis.log", data_dir / "redis.pid"
        with open(log, "wb") as out_log:
            proc = subprocess.Popen(
                [str(REDIS_SERVER), str(config_dir / "redis.conf"), "--daemonize", "no", "--pidfile", str(pidfile)],
                stdout=out_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=data_dir,
                **({"user": "redis", "group": "redis", "extra_groups": []} if as_redis else {}),
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
        env_lines = (out / "appliance.env").read_text().splitlines()
        env = dict(line.split("=", 1) for line in env_lines if line and not line.startswith("#"))
        yield Server(
            port=port,
            password=password,
            ca=config_dir / "tls/ca.pem",
            other_ca=pki["other-ca.pem"],
            client_cert=pki["client.pem"],
            client_key=pki["client.key"],
            stranger_cert=pki["stranger.pem"],
            stranger_key=pki["stranger.key"],
            config=config_dir / "redis.conf",
            acl=config_dir / "users.acl",
            check_script=out / "redis-check",
            toml=out / "appliance.toml",
            env=env,
            log=log,
            proc=proc,
            render_output=render_output,
            as_redis=as_redis,
        )
    finally:
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


def _refused(call: object) -> str:
    """The class of the error Redis answered with ('' when the call was answered)."""
    try:
        call()  # type: ignore[operator]
    except redis.exceptions.RedisError as exc:
        return type(exc).__name__
    return ""


# --- the rendered files ---------------------------------------------------------------------------------------------
def test_rendered_configuration_is_tls_only_and_hardened(server: Server) -> None:
    """The role's defaults: port 0, TLS with the CA, the ACL file, noeviction, no persistence, no debug/module
    commands; the ACL file holds the password's SHA-256, never the password."""
    import hashlib

    conf = server.config.read_text()
    directives = {line.split()[0]: line.split(None, 1)[1] for line in conf.splitlines() if line and line[0] != "#"}
    assert directives["port"] == "0"
    assert directives["tls-port"] == str(server.port)
    assert directives["bind"] == "127.0.0.1"
    assert directives["protected-mode"] == "yes"
    assert directives["maxmemory-policy"] == "noeviction" and directives["maxmemory"] == MAXMEMORY
    assert directives["save"] == '""' and directives["appendonly"] == "no"
    assert directives["enable-debug-command"] == "no" and directives["enable-module-command"] == "no"
    assert directives["aclfile"] == str(server.acl)
    assert directives["tls-auth-clients"] == "yes"  # redis_tls_auth_clients: true in this test
    acl = server.acl.read_text()
    in_clear = server.password in acl
    assert not in_clear, "the ACL file holds the password in clear"
    hashed = "#" + hashlib.sha256(server.password.encode()).hexdigest()
    assert hashed in acl
    assert acl.splitlines()[0] == "user default off resetpass resetkeys resetchannels -@all"
    assert f"user {USER} on " in acl and f" ~{PREFIX}* " in acl and " -@all " in acl


def test_no_secret_in_ansible_output_or_redis_log(server: Server) -> None:
    """Neither the rendering run (no_log on the ACL and secrets files) nor Redis's log shows the password."""
    assert "redis.conf" in server.render_output or "server configuration" in server.render_output
    # (computed first: a failed assertion must not print the password)
    in_output = server.password in server.render_output
    in_log = server.password.split("/")[0] in server.log.read_text()
    assert not in_output, "the password is in ansible-playbook's output"
    assert not in_log, "the password is in Redis's log"


# --- the running server ---------------------------------------------------------------------------------------------
def test_only_the_tls_port_listens(server: Server) -> None:
    """The server's only listening socket is the TLS port on the configured address (port 0: no plaintext port)."""
    ss = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    mine = [line.split()[3] for line in ss.splitlines() if f"pid={server.proc.pid}," in line]
    assert mine == [f"127.0.0.1:{server.port}"], ss


def test_plaintext_is_refused_on_the_tls_port(server: Server) -> None:
    """A plaintext client gets no answer to PING (Redis waits for a TLS handshake and drops it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        s.settimeout(3)
        try:
            answer = s.recv(100)
        except (TimeoutError, ConnectionResetError):
            answer = b""
    assert not answer.startswith((b"+PONG", b"-NOAUTH", b"-ERR")), answer
    plain = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=3, retry=Retry(NoBackoff(), 0))
    assert _refused(plain.ping) in ("ConnectionError", "TimeoutError")


def test_tls_is_verified_against_the_ca(server: Server) -> None:
    """With the CA the handshake succeeds (the certificate names 127.0.0.1); with another CA it fails."""
    context = ssl.create_default_context(cafile=str(server.ca))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    wrong = ssl.create_default_context(cafile=str(server.other_ca))
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        wrong.wrap_socket(raw, server_hostname="127.0.0.1")
    assert _refused(lambda: server.client(ssl_ca_certs=str(server.other_ca)).ping()) == "ConnectionError"
    assert server.client().ping() is True


def test_mutual_tls_refuses_a_client_without_a_certificate_of_the_ca(server: Server) -> None:
    """With redis_tls_auth_clients the right password is not enough: no client certificate, or one issued by
    another CA, and the handshake fails; the CA's client certificate is accepted."""
    assert _refused(lambda: server.client(ssl_certfile=None, ssl_keyfile=None).ping()) == "ConnectionError"
    stranger = {"ssl_certfile": str(server.stranger_cert), "ssl_keyfile": str(server.stranger_key)}
    assert _refused(lambda: server.client(**stranger).ping()) == "ConnectionError"
    assert server.client().ping() is True


def test_default_user_cannot_authenticate(server: Server) -> None:
    """Without credentials nothing is answered; the default user is off whatever the password; a wrong password of
    the gateway's user is refused."""
    anonymous = server.client(username=None, password=None, protocol=2)
    assert _refused(anonymous.ping) == "AuthenticationError"
    assert _refused(lambda: anonymous.get(f"{PREFIX}x")) == "AuthenticationError"
    for candidate in ("", "nopass", server.password):
        as_default = server.client(username="default", password=candidate)
        refused = _refused(as_default.ping)
        assert refused == "AuthenticationError", "the default user logged in"
    # AUTH <password> alone is AUTH default <password>
    # (clients made first: a failed assertion must not print the password)
    legacy = server.client(username=None, password=server.password, protocol=2)
    wrong = server.client(password=server.password + "x")
    assert _refused(legacy.ping) == "AuthenticationError"
    assert _refused(wrong.ping) == "AuthenticationError"


def test_gateway_user_is_refused_everything_else(server: Server) -> None:
    """The gateway's user: dangerous and administrative commands, EVAL, key listing, pub/sub and every key outside
    its prefix are refused (NOPERM), also from inside a Lua script; its own prefix works."""
    c = server.client()
    refused = {
        "FLUSHALL": lambda: c.flushall(),
        "FLUSHDB": lambda: c.flushdb(),
        "CONFIG GET": lambda: c.config_get("*"),
        "CONFIG SET": lambda: c.config_set("maxmemory", "0"),
        "KEYS": lambda: c.keys("*"),
        "SCAN": lambda: c.scan(0),
        "SHUTDOWN": lambda: c.execute_command("SHUTDOWN", "NOSAVE"),
        "ACL": lambda: c.execute_command("ACL", "LIST"),
        "INFO": lambda: c.info(),
        "EVAL": lambda: c.eval("return 1", 0),
        "SCRIPT FLUSH": lambda: c.script_flush(),
        "CLIENT LIST": lambda: c.client_list(),
        "PUBLISH": lambda: c.publish("x", "y"),
        "MONITOR": lambda: c.execute_command("MONITOR"),
        "GET outside the prefix": lambda: c.get("other:key"),
        "SET outside the prefix": lambda: c.set("other:key", "1"),
        "DEL outside the prefix": lambda: c.delete("other:key"),
        "SET a prefix look-alike": lambda: c.set(PREFIX.rstrip(":") + "x", "1"),
    }
    answers = {name: _refused(call) for name, call in refused.items()}
    assert set(answers.values()) == {"NoPermissionError"}, answers
    # enable-debug-command/enable-module-command no: refused before the ACL is consulted
    for command in (("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
        answer = _refused(lambda command=command: c.execute_command(*command))
        assert answer in ("NoPermissionError", "ResponseError"), command
    # a script may touch only keys under the prefix, whatever it declares
    sha = c.script_load("return redis.call('GET', KEYS[1])")
    assert _refused(lambda: c.evalsha(sha, 1, "other:key")) == "NoPermissionError"
    sneaky = c.script_load("return redis.call('SET', 'other:key', '1')")
    assert _refused(lambda: c.evalsha(sneaky, 1, f"{PREFIX}decoy")) in ("NoPermissionError", "ResponseError")
    assert c.set(f"{PREFIX}probe", "1") is True
    assert c.evalsha(sha, 1, f"{PREFIX}probe") == b"1"
    assert c.delete(f"{PREFIX}probe") == 1
    # the handshake's own commands
    assert c.client_setname("appliance-gateway") is True and c.select(0) is True and c.time()


# --- the gateway's real store ---------------------------------------------------------------------------------------
@pytest.fixture
def settings(server: Server, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The gateway's settings as it loads them: the rendered appliance.toml plus the secrets file's variables."""
    from appliance.config import load_settings

    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    return load_settings(config_file=server.toml)


def test_appliance_role_writes_the_store_settings(server: Server, settings) -> None:  # type: ignore[no-untyped-def]
    """appliance_state_store: redis puts state_store, redis_ca_cert, the prefix and workers into appliance.toml, and
    the rediss:// URL with the percent-encoded password only into the secrets file."""
    from urllib.parse import unquote, urlsplit

    g = settings.gateway
    assert (g.state_store, g.workers, g.redis_key_prefix) == ("redis", 2, PREFIX)
    assert g.redis_ca_cert == str(server.ca)
    assert (g.redis_client_cert, g.redis_client_key) == (str(server.client_cert), str(server.client_key))
    assert set(server.env) == {"APPLIANCE_GATEWAY__REDIS_URL"}
    url = urlsplit(g.redis_url.get_secret_value())
    assert (url.scheme, url.hostname, url.port, url.path) == ("rediss", "127.0.0.1", server.port, "/0")
    assert unquote(url.username or "") == USER
    same = unquote(url.password or "") == server.password  # (compared first: never printed)
    assert same, "the URL's password is not redis_gateway_password"
    in_toml = server.password.split("/")[0] in server.toml.read_text()
    assert not in_toml, "the password is in appliance.toml"


async def test_gateway_store_runs_against_the_hardened_server(settings) -> None:  # type: ignore[no-untyped-def]
    """The store the gateway opens (open_key_service + open_state, production checks included) admits, charges
    tokens, flags bursts and distinct prompts, throttles, and creates, reads, expires, sweeps and deletes sessions:
    every command its scripts and redis-py's handshake run is allowed."""
    from appliance.errors import RateLimited
    from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile
    from appliance.gateway.state import open_state
    from appliance.gateway.state_redis import RedisState
    from appliance.keys import open_key_service

    keys = open_key_service(settings)
    state = open_state(settings, keys)
    try:
        assert isinstance(state, RedisState)
        assert await state.ping() is True
        lenient = ExtractionRules(burst_max_requests=1000, distinct_max_prompts=1000)
        profile = LimitProfile(requests_per_minute=100, tokens_per_minute=50)
        adapter = AdapterLimits()
        who = f"svc-{secrets.token_hex(4)}"
        assert await state.limits.admit(who, profile, "triage", adapter, "hello", lenient) is None
        await state.limits.charge_tokens(who, "triage", 60)  # more than the minute's 50 tokens
        with pytest.raises(RateLimited, match="principal tokens"):
            await state.limits.admit(who, profile, "triage", adapter, "hello", lenient)
        # bursts: the third request in the window is flagged, the next one throttled
        burst = ExtractionRules(burst_max_requests=2, distinct_max_prompts=1000, throttle_s=30)
        bursty = f"svc-{secrets.token_hex(4)}"
        for _ in range(2):
            assert await state.limits.admit(bursty, profile, "triage", adapter, "same", burst) is None
        flag = await state.limits.admit(bursty, profile, "triage", adapter, "same", burst)
        assert flag is not None and (flag.reason, flag.count) == ("burst", 3)
        with pytest.raises(RateLimited, match="throttled"):
            await state.limits.admit(bursty, profile, "triage", adapter, "same", burst)
        # distinct prompts: a lower limit trims the window (ZREMRANGEBYRANK) before flagging
        curious = f"svc-{secrets.token_hex(4)}"
        for n in range(3):
            assert await state.limits.admit(curious, profile, "triage", adapter, f"prompt {n}", lenient) is None
        strict = ExtractionRules(burst_max_requests=1000, distinct_max_prompts=1)
        flag = await state.limits.admit(curious, profile, "triage", adapter, "prompt 3", strict)
        assert flag is not None and (flag.reason, flag.count) == ("distinct_prompts", 2)
        # sessions: create, read, log out; and an idle expiry reported with its subject (idle timeout 1 s)
        session = await state.sessions.create({"subject": "alice", "groups": ["analysts"]})
        found = await state.sessions.get(session.id)
        assert found.session is not None and found.session.data["subject"] == "alice"
        assert found.session.csrf == session.csrf
        await state.sessions.delete(session.id)
        assert (await state.sessions.get(session.id)).session is None
        idle = await state.sessions.create({"subject": "bob"})
        left = await state.sessions.create({"subject": "carol"})
        await asyncio.sleep(1.3)
        expired = await state.sessions.get(idle.id)
        assert (expired.session, expired.expired, expired.expired_subject) == (None, "idle", "bob")
        # the sweeper (its index, PTTL, ZRANGEBYSCORE, ZREM): carol's expiry without a request, bob's not again
        (swept,) = await state.sessions.sweep()
        assert (swept.reason, swept.subject, swept.handle) == ("idle", "carol", left.handle)
        assert await state.sessions.sweep() == []
        told = await state.sessions.get(left.id)
        assert (told.session, told.expired, told.expired_subject) == (None, "idle", None)
    finally:
        await state.aclose()


async def test_a_full_server_refuses_writes_and_evicts_nothing(server: Server, settings) -> None:  # type: ignore[no-untyped-def]
    """maxmemory + noeviction: filled up, Redis refuses writes (the store fails closed with StateStoreUnavailable)
    and keeps every key; freed, the store admits again."""
    from appliance.errors import StateStoreUnavailable
    from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile
    from appliance.gateway.state import open_state
    from appliance.keys import open_key_service

    c = server.client()
    filler = [f"{PREFIX}fill:{n}" for n in range(400)]
    written: list[str] = []
    state = open_state(settings, open_key_service(settings))
    try:
        full = False
        for key in filler:
            try:
                c.set(key, os.urandom(32 * 1024))
            except redis.exceptions.OutOfMemoryError:
                full = True
                break
            written.append(key)
        assert full, f"{len(written)} values written without reaching maxmemory"
        assert all(c.get(key) is not None for key in written)  # nothing was evicted
        with pytest.raises(StateStoreUnavailable):
            await state.limits.admit(
                f"svc-{secrets.token_hex(4)}", LimitProfile(), "triage", AdapterLimits(), "hi", ExtractionRules()
            )
        c.delete(*written)
        written.clear()
        assert (
            await state.limits.admit(
                f"svc-{secrets.token_hex(4)}", LimitProfile(), "triage", AdapterLimits(), "hi", ExtractionRules()
            )
            is None
        )
    finally:
        if written:
            c.delete(*written)
        await state.aclose()


# --- the role's configuration check ---------------------------------------------------------------------------------
def test_configuration_check_accepts_the_rendered_files_and_refuses_broken_ones(server: Server, tmp_path: Path) -> None:
    """The role validates each file by starting redis-server from it as the redis account: the rendered files pass;
    an unknown directive, an ACL naming an unknown command and a certificate that does not match its key fail."""
    if not server.as_redis:
        pytest.skip("the check switches to the redis account: needs root")
    check = [str(server.check_script)]
    ok_conf = subprocess.run([*check, str(server.config)], capture_output=True, text=True, timeout=60)
    assert ok_conf.returncode == 0, ok_conf.stderr
    ok_acl = subprocess.run([*check, "--acl", str(server.acl)], capture_output=True, text=True, timeout=60)
    assert ok_acl.returncode == 0, ok_acl.stderr
    bad_conf = tmp_path / "bad.conf"
    bad_conf.write_text(server.config.read_text() + "no-such-directive yes\n")
    result = subprocess.run([*check, str(bad_conf)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "no-such-directive" in result.stderr, result.stderr
    bad_acl = tmp_path / "bad.acl"
    bad_acl.write_text("user default off\nuser x on nopass +nosuchcommand\n")
    result = subprocess.run([*check, "--acl", str(bad_acl)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "nosuchcommand" in result.stderr, result.stderr
    mismatched = tmp_path / "mismatched.conf"
    other_key = server.other_ca.with_name("other-ca.key")
    _chown_for_redis(other_key, 0o640)
    mismatched.write_text(re.sub(r"(?m)^tls-key-file .*$", f"tls-key-file {other_key}", server.config.read_text()))
    result = subprocess.run([*check, str(mismatched)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr


# --- the hospital inventory ----------------------------------------------------------------------------------------
def test_hospital_inventory_opens_redis_to_the_gateways_only(tmp_path: Path) -> None:
    """Rendered for the hospital layout (Redis on gw1): gw1's ruleset opens the TLS port on the VLAN to the gateway
    hosts' addresses only, the other hosts' rulesets do not open it, every ruleset passes nft -c, and gw1's
    gateway settings point at gw1's VLAN address with four workers."""
    from urllib.parse import urlsplit

    tmp_path.chmod(0o700)
    password = secrets.token_hex(32)
    rendered = render(
        "inventories/hospital/hosts.yml",
        "gw1:gpu1:vault1",
        tmp_path,
        ["network", "appliance"],
        HOSPITAL_FILES,
        {"redis_gateway_password": password},
    )
    in_output = password in rendered.stdout + rendered.stderr
    assert not in_output, "the password is in ansible-playbook's output"
    gw1, gpu1, vault1 = ((tmp_path / f"{h}.nft").read_text() for h in ("gw1", "gpu1", "vault1"))
    assert "set redis_clients { type ipv4_addr; flags interval; elements = { 10.42.0.22/32 }; }" in gw1
    assert 'iifname "vlan42" tcp dport 6380 ip saddr @redis_clients accept' in gw1
    assert "dport 6380" not in gpu1 and "dport 6380" not in vault1
    for host in ("gw1", "gpu1", "vault1"):
        checked = subprocess.run(["nft", "-c", "-f", str(tmp_path / f"{host}.nft")], capture_output=True, text=True)
        assert checked.returncode == 0, f"{host}: {checked.stderr}"
    toml = (tmp_path / "gw1.toml").read_text()
    assert 'state_store = "redis"' in toml and "workers = 4" in toml
    assert 'redis_ca_cert = "/etc/appliance/redis-ca.pem"' in toml
    url = (tmp_path / "gw1.env").read_text().split("APPLIANCE_GATEWAY__REDIS_URL=", 1)[1].strip()
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.username) == ("rediss", "10.42.0.22", 6380, USER)

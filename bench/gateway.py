"""Gateway overhead on loopback: the gateway (API-key auth + access policy + limits + durable, hash-chained audit
of every request and outcome, real local key service for the HMAC digests) in front of a fast stub TGI-protocol
backend, compared with (a) the stub directly and (b) the LiteLLM proxy (master key) in front of the same stub.

One load generator (aiohttp, keep-alive) sends the same OpenAI chat request to each target at the same
concurrency. Prints throughput ratios and the latency the gateway adds (p50/p99). LiteLLM runs from its own venv
(bench/.venv-litellm, created on first use: its pins clash with ours).

    .venv/bin/python bench/gateway.py [--concurrency 64] [--requests 3000] [--skip-litellm] [--replicas 2]

With ``--replicas N`` it also runs a gateway routing over N stubs (``serving.replicas``) beside the one-replica
gateway, and prints the CPU time of the routing decision per request (the ReplicaSet layer alone, measured
in-process against a client that answers at once; goal: under 0.05 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
LITELLM_VERSION = "1.106.2"
RESULTS = ROOT / "bench" / "results"
MASTER_KEY = "sk-bench-master-key-loopback-only"
CHAT = {"model": "triage@production", "messages": [{"role": "user", "content": "benchmark prompt"}], "max_tokens": 8}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the stub backend: a minimal HTTP/1.1 keep-alive server speaking TGI's /generate and OpenAI chat ---------------
_GEN = json.dumps(
    {
        "generated_text": " ok ok ok ok ok ok ok ok",
        "details": {"finish_reason": "length", "generated_tokens": 8, "input_length": 3, "prefill": [], "tokens": []},
    }
).encode()
_CHAT = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "triage",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ok ok ok ok ok ok ok ok"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 8, "total_tokens": 11},
    }
).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "triage-v1", "object": "model", "parent": "base"}]}).encode()


def _response(body: bytes, status: str = "200 OK") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nx-prompt-tokens: 3\r\n\r\n"
    )
    return head.encode() + body


async def _stub_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *headers = head.decode("latin-1").split("\r\n")
            _, path, _ = line.split(" ", 2)
            length = 0
            for h in headers:
                if h.lower().startswith("content-length:"):
                    length = int(h.split(":", 1)[1])
            if length:
                await reader.readexactly(length)
            if path.startswith("/generate"):
                writer.write(_response(_GEN))
            elif path.endswith("/chat/completions"):
                writer.write(_response(_CHAT))
            elif path.endswith("/models"):
                writer.write(_response(_MODELS))
            elif path in ("/health", "/info"):
                writer.write(_response(b"{}"))
            else:
                writer.write(_response(b'{"error":"not found"}', "404 Not Found"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_stub(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.start_server(_stub_conn, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# --- the gateway process -------------------------------------------------------------------------------------------
def make_key(data_dir: Path, key_file: Path) -> None:
    """An API key with the service scope, written to key_file (for a set of gateway processes sharing data_dir)."""
    from appliance.gateway._db import GatewayDB, db_path
    from appliance.gateway.auth.apikeys import ApiKeyStore

    key, _ = ApiKeyStore(GatewayDB(db_path(data_dir))).create(
        "bench", ["service.inference"], ttl_s=3600, created_by="bench"
    )
    key_file.write_text(key)


_NO_DISK = ("--save", "", "--appendonly", "no", "--dir")  # no persistence; the directory follows


def start_redis(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on loopback with a random password (the shared state store of scale-out gateways)."""
    import secrets

    port, password = free_port(), secrets.token_urlsafe(18)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password, *_NO_DISK, str(work)],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return proc, f"redis://:{password}@127.0.0.1:{port}/0"
        time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def routing_cost_us(replicas: int, requests: int = 20_000) -> float:
    """CPU microseconds the ReplicaSet adds to one request over ``replicas`` replicas: the same requests through it
    and straight to an in-memory client that answers at once (the decision, bookkeeping and metrics)."""
    from appliance.contracts import GenerationParams
    from appliance.protocols import Generation
    from appliance.serving import ReplicaSet, begin_routing
    from appliance.serving._replicas import Replica

    answer = Generation("ok", 1, 1, "length")
    fingerprint = "f" * 64

    class Instant:
        name = "embedded"

        async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
            return answer

        async def holdings(self) -> dict[str, str | None]:
            return {"triage-v1": fingerprint}

        async def health(self) -> bool:
            return True

        async def aclose(self) -> None:
            return None

    params = GenerationParams()

    async def run() -> float:
        client = Instant()
        rs = ReplicaSet([Replica(f"r{i}", Instant()) for i in range(replicas)], refresh_s=3600)  # type: ignore[arg-type]
        begin_routing(fingerprint)
        await rs.generate("triage-v1", "x", params)  # first use reads the holdings
        timings = []
        for _ in range(3):  # best of three: a shared machine's noise only ever adds
            t0 = time.process_time()
            for _ in range(requests):
                await client.generate("triage-v1", "x", params)
            direct = time.process_time() - t0
            t0 = time.process_time()
            for _ in range(requests):
                begin_routing(fingerprint)
                await rs.generate("triage-v1", "x", params)
            timings.append((time.process_time() - t0 - direct) / requests * 1e6)
        await rs.aclose()
        return min(timings)

    return asyncio.run(run())


def run_gateway(
    port: int,
    stub_port: int,
    data_dir: Path,
    key_file: Path,
    audit_kind: str = "durable",
    redis_url: str | None = None,
    extra_stub_ports: list[int] | None = None,
) -> None:
    import logging

    import structlog
    import uvicorn

    from appliance.audit import open_audit_log
    from appliance.config import load_settings
    from appliance.gateway import AdapterRef, create_app
    from appliance.keys import open_key_service
    from appliance.serving import ReplicaSet, TGIBackend
    from appliance.serving._replicas import Replica
    from appliance.testing import StaticCatalog

    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    gateway: dict[str, Any] = {}
    if redis_url:  # one of several processes on one port (SO_REUSEPORT), limits and sessions in Redis
        gateway = {"state_store": "redis", "redis_url": redis_url}
    settings = load_settings(data_dir=data_dir, policies_dir=ROOT / "policies", gateway=gateway)
    keys = open_key_service(settings)
    if audit_kind == "durable":
        audit = open_audit_log(settings, keys=keys)
    else:  # diagnostic only: what the durable trail costs
        from appliance.testing import MemoryAuditLog

        audit = MemoryAuditLog()  # type: ignore[assignment]
    if not redis_url:
        make_key(data_dir, key_file)
    pool = int(os.environ.get("BENCH_BACKEND_POOL", "16"))  # httpcore's pool bookkeeping grows with its size
    # The production path: a ReplicaSet (serving.url is a one-replica list), over each stub given.
    ports = [stub_port, *(extra_stub_ports or [])]
    backend = ReplicaSet(
        [
            Replica(f"stub{i}", TGIBackend(f"http://127.0.0.1:{p}", published=None, max_connections=pool, retries=0))
            for i, p in enumerate(ports)
        ]
    )
    # The published set: a fixed catalog (the registry's own read path is cached by the gateway in any case).
    catalog = StaticCatalog([AdapterRef("triage", 1, "f" * 64, is_production=True)])
    app = create_app(settings, backend=backend, audit=audit, registry=catalog, keys=keys)
    # Limits sized for a load test, not for an analyst: the bench measures the path, not the 429s.
    policy = app.state.gateway.policy.current
    from appliance.gateway.policy import AdapterLimits, ExtractionRules, LimitProfile

    policy.limits.profiles["service"] = LimitProfile(requests_per_minute=10_000_000, tokens_per_minute=10**9)
    object.__setattr__(policy.limits, "adapter", AdapterLimits(requests_per_minute=10_000_000, tokens_per_minute=10**9))
    object.__setattr__(
        policy.limits, "extraction", ExtractionRules(burst_max_requests=10_000_000, distinct_max_prompts=10_000_000)
    )
    from appliance.cli.gateway import freeze_startup_heap

    freeze_startup_heap()  # as `appliance gateway run` does
    config = uvicorn.Config(app, log_level="warning", access_log=False, loop="uvloop", http="httptools", backlog=2048)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the kernel spreads connections over the set
    sock.bind(("127.0.0.1", port))
    uvicorn.Server(config).run(sockets=[sock])


# --- LiteLLM -------------------------------------------------------------------------------------------------------
def ensure_litellm() -> Path | str:
    """The LiteLLM binary in its own venv (created when missing); a reason string when it cannot be installed."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"litellm[proxy]=={LITELLM_VERSION} could not be installed: {exc}"
    return binary


def start_litellm(binary: Path, port: int, stub_port: int, work: Path) -> subprocess.Popen[bytes]:
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: triage@production\n"
        "    litellm_params:\n"
        "      model: openai/triage\n"
        f"      api_base: http://127.0.0.1:{stub_port}/v1\n"
        "      api_key: stub\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "NO_DOCS": "True",
    }
    env.pop("DATABASE_URL", None)
    log = (work / "litellm.log").open("wb")
    return subprocess.Popen(
        [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by the processes of one process group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after "comm": state ppid pgrp ... utime(12) stime(13)
            total += int(fields[11]) + int(fields[12])
    return total / tick


# --- load generator ------------------------------------------------------------------------------------------------
async def wait_ready(url: str, headers: dict[str, str], timeout_s: float = 120) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, json=CHAT, headers=headers) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


async def load(url: str, headers: dict[str, str], concurrency: int, requests: int) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    remaining = requests
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.post(url, json=CHAT, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - t0)

        warm = min(200, requests // 5)
        remaining = warm
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        remaining = requests
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def load_open(url: str, headers: dict[str, str], rate: float, seconds: float, concurrency: int) -> dict[str, Any]:
    """Open-loop load: requests are due at a fixed rate, at most ``concurrency`` in flight (one connection each).

    Latency counts from when a request was due, so a stalled target cannot hide its queue (no coordinated
    omission). This is the added latency a client sees at a load the target can sustain; the closed loop above
    measures capacity, where latency is only the queue (concurrency / throughput).
    """
    import aiohttp

    latencies: list[float] = []
    errors = 0
    slots = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(due: float) -> None:
            nonlocal errors
            async with slots, session.post(url, json=CHAT, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - due)

        total = int(rate * seconds)
        warm = [asyncio.create_task(one(time.perf_counter())) for _ in range(min(concurrency, 32))]
        await asyncio.gather(*warm)
        latencies.clear()
        tasks = []
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rate_rps": rate,
        "achieved_rps": len(latencies) / elapsed,
        "errors": errors,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument(
        "--open-load",
        type=float,
        default=0.5,
        help="open-loop rate as a fraction of the gateway's measured capacity (added latency at a sustainable load)",
    )
    parser.add_argument("--open-seconds", type=float, default=5.0, help="per target and round")
    parser.add_argument(
        "--open-rounds",
        type=int,
        default=3,
        help="open-loop rounds, each the stub then the gateway (the median of the rounds is reported: a burst of "
        "noise on a shared machine spoils one round, not the figure)",
    )
    parser.add_argument(
        "--gateway-audit",
        choices=["durable", "memory"],
        default="durable",
        help="memory: a diagnostic run without the durable audit trail (not the product)",
    )
    parser.add_argument(
        "--gateway-workers",
        type=int,
        default=0,
        help="also measure N gateway processes on one port sharing a Redis state store (scale-out; 0: skip)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="also measure a gateway routing over N stub replicas, and the routing decision's CPU (0: skip)",
    )
    parser.add_argument("--extra-stub-ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--role", choices=["stub", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "stub":
        run_stub(args.port)
        return 0
    if args.role == "gateway":
        extra = [int(p) for p in args.extra_stub_ports.split(",") if p]
        run_gateway(args.port, args.stub_port, args.data_dir, args.key_file, args.gateway_audit, args.redis_url, extra)
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[subprocess.Popen[bytes]] = []
    stub_port, gw_port, llm_port = free_port(), free_port(), free_port()
    me = [sys.executable, str(Path(__file__).resolve())]
    try:
        procs.append(subprocess.Popen([*me, "--role", "stub", "--port", str(stub_port)], start_new_session=True))
        key_file = work / "key"

        def gateway(port: int, data_dir: Path, redis_url: str | None = None) -> subprocess.Popen[bytes]:
            argv = [*me, "--role", "gateway", "--port", str(port), "--stub-port", str(stub_port)]
            argv += ["--data-dir", str(data_dir), "--key-file", str(key_file), "--gateway-audit", args.gateway_audit]
            return subprocess.Popen([*argv, "--redis-url", redis_url] if redis_url else argv, start_new_session=True)

        procs.append(gateway(gw_port, work / "var"))
        replicas_port, replicas_key = free_port(), work / "replicas-key"
        if args.replicas > 1:  # N-1 more stubs; one more gateway routing over all N
            extra_ports = [free_port() for _ in range(args.replicas - 1)]
            for p in extra_ports:
                procs.append(subprocess.Popen([*me, "--role", "stub", "--port", str(p)], start_new_session=True))
            argv = [*me, "--role", "gateway", "--port", str(replicas_port), "--stub-port", str(stub_port)]
            argv += ["--data-dir", str(work / "var-replicas"), "--key-file", str(replicas_key)]
            argv += ["--gateway-audit", args.gateway_audit, "--extra-stub-ports", ",".join(map(str, extra_ports))]
            procs.append(subprocess.Popen(argv, start_new_session=True))
            replicas_pid = procs[-1].pid
        scale_port, scale_key, scale_pids = free_port(), "", []
        if args.gateway_workers:
            redis, redis_url = start_redis(work)
            procs.append(redis)
            make_key(work / "var-scale", work / "scale-key")
            scale_key = (work / "scale-key").read_text()
            for _ in range(args.gateway_workers):
                procs.append(gateway(scale_port, work / "var-scale", redis_url))
                scale_pids.append(procs[-1].pid)
        litellm_note = "skipped (--skip-litellm)"
        if not args.skip_litellm:
            binary = ensure_litellm()
            if isinstance(binary, str):
                litellm_note = binary
            else:
                llm = start_litellm(binary, llm_port, stub_port, work)
                procs.append(llm)
                litellm_note = f"litellm[proxy] {LITELLM_VERSION}, 1 worker, master key, no database"
        deadline = time.monotonic() + 60
        while not key_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        key = key_file.read_text()
        targets = {
            "direct": (f"http://127.0.0.1:{stub_port}/v1/chat/completions", {}),
            "gateway": (f"http://127.0.0.1:{gw_port}/v1/chat/completions", {"Authorization": f"Bearer {key}"}),
        }
        pgids = {"direct": [procs[0].pid], "gateway": [procs[1].pid]}
        if args.replicas > 1:
            while not replicas_key.exists() and time.monotonic() < deadline + 60:
                time.sleep(0.2)
            name = f"gateway_r{args.replicas}"
            pgids[name] = [replicas_pid]
            targets[name] = (
                f"http://127.0.0.1:{replicas_port}/v1/chat/completions",
                {"Authorization": f"Bearer {replicas_key.read_text()}"},
            )
        if scale_pids:
            name = f"gateway_x{len(scale_pids)}_redis"
            pgids[name] = scale_pids
            targets[name] = (
                f"http://127.0.0.1:{scale_port}/v1/chat/completions",
                {"Authorization": f"Bearer {scale_key}"},
            )
        if "llm" in locals():
            pgids["litellm"] = [llm.pid]
            targets["litellm"] = (
                f"http://127.0.0.1:{llm_port}/v1/chat/completions",
                {"Authorization": f"Bearer {MASTER_KEY}"},
            )
        results: dict[str, Any] = {}
        for name, (url, headers) in targets.items():
            asyncio.run(wait_ready(url, headers))
            cpu0 = sum(group_cpu_s(g) for g in pgids[name])
            results[name] = asyncio.run(load(url, headers, args.concurrency, args.requests))
            # the target's own CPU per request (the stub's share is in "direct"); less noisy than wall time
            cpu = sum(group_cpu_s(g) for g in pgids[name]) - cpu0
            results[name]["cpu_us_per_request"] = cpu / args.requests * 1e6
            one = asyncio.run(load(url, headers, 1, max(200, args.requests // 10)))
            results[name]["c1_p50_ms"], results[name]["c1_p99_ms"] = one["p50_ms"], one["p99_ms"]
            print(f"{name:8s} {json.dumps({k: round(v, 3) for k, v in results[name].items()})}", flush=True)
        # Added latency at a load both can sustain: the same fixed rate, the same 64 connections, to each, in
        # alternating rounds; each round's added latency is the gateway's minus the stub's of that round.
        rate = round(results["gateway"]["throughput_rps"] * args.open_load)
        rounds: list[dict[str, dict[str, Any]]] = []
        for _ in range(args.open_rounds):
            rounds.append({})
            for name in ("direct", "gateway"):
                url, headers = targets[name]
                opened = asyncio.run(load_open(url, headers, rate, args.open_seconds, args.concurrency))
                rounds[-1][name] = opened
                print(f"{name:8s} open loop {json.dumps({k: round(v, 3) for k, v in opened.items()})}", flush=True)
        for name in ("direct", "gateway"):
            results[name]["open"] = {
                "rate_rps": rate,
                "rounds": [r[name] for r in rounds],
                "p50_ms": statistics.median(r[name]["p50_ms"] for r in rounds),
                "p99_ms": statistics.median(r[name]["p99_ms"] for r in rounds),
            }
        added_rounds = [{q: r["gateway"][f"{q}_ms"] - r["direct"][f"{q}_ms"] for q in ("p50", "p99")} for r in rounds]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)

    d, g = results["direct"], results["gateway"]
    summary: dict[str, Any] = {
        "concurrency": args.concurrency,
        "requests": args.requests,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu",
        "litellm": litellm_note,
        "gateway_audit": args.gateway_audit,
        "results": results,
        "gateway_vs_direct_throughput": g["throughput_rps"] / d["throughput_rps"],
        "open_rate_rps": g["open"]["rate_rps"],
        "added_p50_ms": statistics.median(a["p50"] for a in added_rounds),
        "added_p99_ms": statistics.median(a["p99"] for a in added_rounds),
        "added_rounds_ms": added_rounds,
        "saturated_added_p50_ms": g["p50_ms"] - d["p50_ms"],
        "saturated_added_p99_ms": g["p99_ms"] - d["p99_ms"],
        "added_p50_ms_c1": g["c1_p50_ms"] - d["c1_p50_ms"],
        "added_p99_ms_c1": g["c1_p99_ms"] - d["c1_p99_ms"],
    }
    if "litellm" in results:
        summary["gateway_vs_litellm_throughput"] = g["throughput_rps"] / results["litellm"]["throughput_rps"]
        summary["litellm_added_p50_ms"] = results["litellm"]["p50_ms"] - d["p50_ms"]
    print(
        f"\ngateway/direct throughput {summary['gateway_vs_direct_throughput']:.2f}x"
        + (
            f"; gateway/LiteLLM {summary['gateway_vs_litellm_throughput']:.2f}x (target >= 3x)"
            if "litellm" in results
            else ""
        )
    )
    print(
        f"added latency, {args.concurrency} connections at {summary['open_rate_rps']:.0f} req/s "
        f"({args.open_load:.0%} of the gateway's capacity), median of {len(added_rounds)} rounds: "
        f"p50 {summary['added_p50_ms']:.2f} ms (target <= 1), p99 {summary['added_p99_ms']:.2f} ms (target <= 5); "
        "rounds p50 "
        + " ".join(f"{a['p50']:.2f}" for a in added_rounds)
        + ", p99 "
        + " ".join(f"{a['p99']:.1f}" for a in added_rounds)
    )
    print(
        f"saturated ({args.concurrency} in flight, latency = queue): p50 +{summary['saturated_added_p50_ms']:.1f} ms, "
        f"p99 +{summary['saturated_added_p99_ms']:.1f} ms; 1 in flight: p50 +{summary['added_p50_ms_c1']:.2f} ms, "
        f"p99 +{summary['added_p99_ms_c1']:.2f} ms"
    )
    scaled = [n for n in results if n.startswith("gateway_x")]
    for name in scaled:
        summary[f"{name}_vs_gateway_throughput"] = results[name]["throughput_rps"] / g["throughput_rps"]
        print(
            f"{name}: {results[name]['throughput_rps']:.0f} req/s = "
            f"{summary[f'{name}_vs_gateway_throughput']:.2f}x one process on the memory store "
            f"(CPU per request {results[name]['cpu_us_per_request']:.0f} us vs {g['cpu_us_per_request']:.0f} us)"
        )
    if args.replicas:
        one, many = routing_cost_us(1), routing_cost_us(args.replicas)
        summary["routing_cpu_us_per_request"] = {"1": one, str(args.replicas): many}
        print(
            f"routing decision (ReplicaSet, CPU per request): {many:.1f} us over {args.replicas} replicas, "
            f"{one:.1f} us over 1 (goal < 50 us)"
        )
        name = f"gateway_r{args.replicas}"
        if name in results:
            print(
                f"{name}: {results[name]['throughput_rps']:.0f} req/s, CPU per request "
                f"{results[name]['cpu_us_per_request']:.0f} us vs {g['cpu_us_per_request']:.0f} us with one replica"
            )
    print(f"LiteLLM: {litellm_note}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

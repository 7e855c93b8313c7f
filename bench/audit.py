"""Audit trail benchmark: durable appends per second under concurrency, and verification speed.

Run: ``.venv/bin/python bench/audit.py [--records N] [--concurrency 64 256] [--out bench/results/audit.json]``

1. Durable appends: N records per concurrency level, each ``await audit.record(event)`` returning only after the
   record is fdatasync-ed (group commit: concurrent records share one write + fdatasync), on the real disk (not a
   tmpfs), with the real local key service signing a checkpoint every 1000 records. Target >= 20,000/s.
2. Verification: the chain just written (several segments), verified from disk with checkpoint signatures, in
   one process and in one process per CPU. Target >= 500,000 records/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.audit import actor_fields, adapter_fields, audit_event, open_audit_log  # noqa: E402
from appliance.audit._sinks.files import FileStore  # noqa: E402
from appliance.audit._verify import verify_store  # noqa: E402
from appliance.config import load_settings  # noqa: E402
from appliance.keys import AUDIT_SIGNING, LocalKeyService  # noqa: E402

APPEND_TARGET = 20_000
VERIFY_TARGET = 500_000

EVENT = audit_event(
    "gateway.request",
    actor=actor_fields("alice", "oidc", client_id="web", session_id="s-1", roles=["analyst"]),
    source={"ip": "10.1.2.3", "user_agent": "Mozilla/5.0 Firefox/128.0"},
    action="generate",
    route="/v1/inference/adapter/{name}/{version}",
    adapter=adapter_fields("triage", 2, "ab" * 32),
    http_status=200,
    tokens={"prompt": 120, "generated": 64},
    latency_ms=412.5,
    request_id="0b5c4f4e-8f51-4c2e-9d7e-1f0f7f1d2a3b",
    digests={"prompt": "cd" * 32, "output": "ef" * 32},
    details={"stream": False},
)


async def _appends(audit: object, records: int, concurrency: int) -> tuple[float, list[float]]:
    per_task = records // concurrency
    latencies: list[float] = []

    async def worker() -> None:
        for _ in range(per_task):
            t0 = time.perf_counter()
            await audit.record(EVENT)  # type: ignore[attr-defined]
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000, help="records per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "audit.json")
    args = parser.parse_args()

    base = ROOT / "bench" / "results"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="audit-bench-", dir=base))  # the real disk, not /dev/shm
    settings = load_settings(data_dir=work / "var")
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 50_000})})
    keys = LocalKeyService(work / "keystore")
    results: dict[str, object] = {"cpus": os.cpu_count(), "load_avg_before": os.getloadavg()[0]}

    audit = open_audit_log(settings, keys)
    asyncio.run(_appends(audit, 2_000, 64))  # warm-up
    appends = []
    for concurrency in args.concurrency:
        before = dict(audit.stats)
        elapsed, latencies = asyncio.run(_appends(audit, args.records, concurrency))
        batches = audit.stats["batches"] - before["batches"]
        done = len(latencies)
        rate = done / elapsed
        quantiles = statistics.quantiles(latencies, n=100)
        row = {
            "concurrency": concurrency,
            "records": done,
            "seconds": round(elapsed, 3),
            "appends_per_s": round(rate),
            "ratio_to_target": round(rate / APPEND_TARGET, 2),
            "fdatasyncs": batches,
            "records_per_fdatasync": round(done / max(batches, 1), 1),
            "latency_ms_p50": round(quantiles[49] * 1000, 2),
            "latency_ms_p99": round(quantiles[98] * 1000, 2),
        }
        appends.append(row)
        print(
            f"durable appends, {concurrency:>3} concurrent tasks: {rate:>9,.0f}/s "
            f"({rate / APPEND_TARGET:.2f}x target {APPEND_TARGET:,}/s); {batches:,} fdatasyncs "
            f"({row['records_per_fdatasync']} records each); latency p50 {row['latency_ms_p50']} ms, "
            f"p99 {row['latency_ms_p99']} ms"
        )
    audit.close_sync()
    results["appends"] = appends

    store = FileStore(settings.audit_dir)
    public_keys = keys.public_keys(AUDIT_SIGNING)
    size = store.total_bytes()
    verifies = []
    for workers in (1, os.cpu_count() or 1):
        t0 = time.perf_counter()
        report = verify_store(store, public_keys, workers=workers)
        elapsed = time.perf_counter() - t0
        assert report.ok, [str(p) for p in report.all_problems[:5]]
        rate = report.records / elapsed
        verifies.append(
            {
                "workers": workers,
                "records": report.records,
                "checkpoints": sum(c.checkpoints for c in report.chains),
                "mb": round(size / 1e6, 1),
                "seconds": round(elapsed, 3),
                "records_per_s": round(rate),
                "ratio_to_target": round(rate / VERIFY_TARGET, 2),
            }
        )
        print(
            f"verification, {workers} process(es): {report.records:,} records ({size / 1e6:.0f} MB, "
            f"{verifies[-1]['checkpoints']} signed checkpoints) in {elapsed:.2f} s = {rate:>9,.0f}/s "
            f"({rate / VERIFY_TARGET:.2f}x target {VERIFY_TARGET:,}/s)"
        )
    results["verify"] = verifies
    results["load_avg_after"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    best_append = max(r["appends_per_s"] for r in appends)  # type: ignore[type-var]
    best_verify = max(v["records_per_s"] for v in verifies)  # type: ignore[type-var]
    print(f"best: {best_append:,} appends/s, {best_verify:,} verified records/s; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

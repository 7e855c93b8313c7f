"""Serving benchmark: the embedded engine against plain transformers, and mixed-adapter batching under load.

    .venv/bin/python bench/serving.py                      # tiny random Llama (seconds)
    .venv/bin/python bench/serving.py --model smollm2      # SmolLM2-135M (appliance models bootstrap smollm2-135m)
    .venv/bin/python bench/serving.py --base DIR --device cuda

(1) single stream, greedy: engine tokens/s (in process, and over HTTP) / transformers ``generate`` tokens/s on the
    same model and adapter (target >= 0.9);
(2) 8 concurrent requests over 8 different adapters / 8 concurrent requests on one adapter (target >= 0.8);
(3) the same under load from many HTTP clients: throughput and p50/p99 latency, mixed / single.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "History of present illness: the patient is a 64 year old with chest pain radiating to the left arm"
N_ADAPTERS = 8


def make_adapters(base: Path, out: Path, count: int) -> list[tuple[str, Path]]:
    """``count`` random-init LoRA adapters (r=8 on the attention projections) in peft format."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    made = []
    for i in range(count):
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        get_peft_model(model, config).save_pretrained(out / f"bench{i}-v1")
        made.append((f"bench{i}-v1", out / f"bench{i}-v1"))
    return made


def plain_generate(base: Path, adapter: Path, device: str, tokens: int, runs: int) -> dict[str, float]:
    """transformers ``generate`` with peft, greedy, one stream."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from appliance.serving.engine._model import resolve_device

    dev = resolve_device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(dev)
    model = PeftModel.from_pretrained(model, adapter).to(dev).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids.to(dev)
    kwargs = {"max_new_tokens": tokens, "do_sample": False, "pad_token_id": tok.pad_token_id}
    with torch.inference_mode():
        model.generate(ids, **kwargs)  # warm-up
        generated, elapsed = 0, 0.0
        for _ in range(runs):
            _sync(dev)
            start = time.perf_counter()
            out = model.generate(ids, **kwargs)
            _sync(dev)
            elapsed += time.perf_counter() - start
            generated += out.shape[1] - ids.shape[1]
    return {"tokens_per_s": generated / elapsed, "tokens": generated / runs}


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


async def engine_single(engine: Any, adapter: str, tokens: int, runs: int) -> dict[str, float]:
    from appliance.contracts import GenerateParameters

    params = GenerateParameters(max_new_tokens=tokens)
    await engine.generate(await engine.prepare(PROMPT, params, stream=False, adapter=adapter))
    generated, elapsed = 0, 0.0
    for _ in range(runs):
        job = await engine.prepare(PROMPT, params, stream=False, adapter=adapter)
        start = time.perf_counter()
        fin = await engine.generate(job)
        elapsed += time.perf_counter() - start
        generated += len(fin.token_ids)
    return {"tokens_per_s": generated / elapsed, "tokens": generated / runs}


async def engine_concurrent(engine: Any, adapters: list[str], tokens: int, runs: int) -> dict[str, float]:
    """len(adapters) requests at once (one per entry), repeated ``runs`` times."""
    from appliance.contracts import GenerateParameters

    params = GenerateParameters(max_new_tokens=tokens)
    generated, elapsed = 0, 0.0
    for run in range(runs + 1):
        jobs = [
            await engine.prepare(f"{PROMPT} ({i})", params, stream=False, adapter=a) for i, a in enumerate(adapters)
        ]
        start = time.perf_counter()
        results = await asyncio.gather(*(engine.generate(j) for j in jobs))
        if run == 0:
            continue  # warm-up
        elapsed += time.perf_counter() - start
        generated += sum(len(r.token_ids) for r in results)
    return {"tokens_per_s": generated / elapsed}


async def http_single(url: str, adapter: str, tokens: int, runs: int) -> dict[str, float]:
    import httpx

    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": tokens, "adapter_id": adapter, "details": True}}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await client.post("/generate", json=body)
        generated, elapsed = 0, 0.0
        for _ in range(runs):
            start = time.perf_counter()
            answer = (await client.post("/generate", json=body)).json()
            elapsed += time.perf_counter() - start
            generated += answer["details"]["generated_tokens"]
    return {"tokens_per_s": generated / elapsed}


async def http_load(url: str, adapters: list[str], clients: int, per_client: int, tokens: int) -> dict[str, float]:
    """``clients`` concurrent HTTP clients, each sending ``per_client`` requests back to back."""
    import httpx

    latencies: list[float] = []
    generated = 0

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        nonlocal generated
        adapter = adapters[i % len(adapters)]
        for j in range(per_client):
            body = {
                "inputs": f"{PROMPT} ({i}.{j})",
                "parameters": {"max_new_tokens": tokens, "adapter_id": adapter, "details": True},
            }
            start = time.perf_counter()
            response = await client.post("/generate", json=body)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            generated += response.json()["details"]["generated_tokens"]

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "tokens_per_s": generated / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "requests": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--base", type=Path, help="an existing base model directory (overrides --model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # the same for both sides; stable figures on a shared CPU

    from appliance.models import bootstrap_smollm2, bootstrap_tiny
    from appliance.serving import AdapterSpec
    from appliance.serving.engine import Engine, Limits, create_app
    from tests.serving.conftest import ServerThread

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    base = args.base
    if base is None:
        base = bootstrap_tiny(work / "tiny") if args.model == "tiny" else bootstrap_smollm2(work / "smollm2")
    made = make_adapters(base, work / "adapters", N_ADAPTERS)
    ids = [a for a, _ in made]
    engine = Engine.start(
        base,
        [AdapterSpec(id=a, path=p) for a, p in made],
        device=args.device,
        limits=Limits(max_input_tokens=1024, max_total_tokens=2048),
        max_batch_size=8,
        max_queue=max(64, args.clients),
    )
    device = str(engine.runner.device)
    results: dict[str, Any] = {
        "model": base.name,
        "device": device,
        "tokens": args.tokens,
        "torch_threads": torch.get_num_threads(),
        "clients": args.clients,
    }

    plain = plain_generate(base, made[0][1], args.device, args.tokens, args.runs)
    single = asyncio.run(engine_single(engine, ids[0], args.tokens, args.runs))
    mixed8 = asyncio.run(engine_concurrent(engine, ids, args.tokens, args.runs))
    same8 = asyncio.run(engine_concurrent(engine, [ids[0]] * N_ADAPTERS, args.tokens, args.runs))
    with ServerThread(create_app(engine)) as server:
        over_http = asyncio.run(http_single(server.url, ids[0], args.tokens, args.runs))
        load_mixed = asyncio.run(http_load(server.url, ids, args.clients, args.per_client, args.tokens))
        load_same = asyncio.run(http_load(server.url, [ids[0]], args.clients, args.per_client, args.tokens))
    engine.close()

    results.update(
        plain_generate_tps=plain["tokens_per_s"],
        engine_single_tps=single["tokens_per_s"],
        engine_http_single_tps=over_http["tokens_per_s"],
        ratio_single=single["tokens_per_s"] / plain["tokens_per_s"],
        ratio_single_http=over_http["tokens_per_s"] / plain["tokens_per_s"],
        concurrent8_mixed_tps=mixed8["tokens_per_s"],
        concurrent8_same_tps=same8["tokens_per_s"],
        ratio_mixed_vs_same=mixed8["tokens_per_s"] / same8["tokens_per_s"],
        load_mixed=load_mixed,
        load_same=load_same,
        ratio_load_mixed_vs_same=load_mixed["tokens_per_s"] / load_same["tokens_per_s"],
    )
    print(f"model {base.name} on {device}, {args.tokens} new tokens per request, greedy")
    print(f"(1) transformers generate      {plain['tokens_per_s']:9.1f} tok/s")
    ratio = results["ratio_single"]
    print(f"    engine (in process)        {single['tokens_per_s']:9.1f} tok/s   ratio {ratio:.2f}  (target >= 0.9)")
    ratio = results["ratio_single_http"]
    print(f"    engine (HTTP /generate)    {over_http['tokens_per_s']:9.1f} tok/s   ratio {ratio:.2f}")
    print(f"(2) 8 concurrent, 8 adapters   {mixed8['tokens_per_s']:9.1f} tok/s")
    ratio = results["ratio_mixed_vs_same"]
    print(f"    8 concurrent, 1 adapter    {same8['tokens_per_s']:9.1f} tok/s   ratio {ratio:.2f}  (target >= 0.8)")
    for name, load in (("mixed adapters", load_mixed), ("one adapter   ", load_same)):
        print(
            f"(3) {args.clients} clients, {name} {load['tokens_per_s']:9.1f} tok/s   "
            f"p50 {load['p50_s'] * 1000:7.0f} ms   p99 {load['p99_s'] * 1000:7.0f} ms"
        )
    print(f"    ratio mixed/one            {results['ratio_load_mixed_vs_same']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

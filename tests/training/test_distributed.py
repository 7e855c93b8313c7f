"""Data-parallel DP training: `appliance train --nproc-per-node 2` (gloo on CPU), killed ranks and --resume."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.errors import ValidationFailed
from appliance.testing import MemoryAuditLog
from appliance.training import (
    LaunchOptions,
    Ledger,
    TrainingRun,
    composed_epsilon,
    current_world,
    make_config,
    without_launcher_options,
)
from appliance.training._distributed import _step_aligned_sampler, is_peer_failure, step_aligned_loader
from tests.fixtures.audit_trail import audit_records
from tests.training.conftest import tiny_options

REPO = Path(__file__).resolve().parents[2]

# the CLI spelling of tiny_options (checkpoint_every aside)
TINY = [
    "--epsilon", "4", "--steps", "4", "--batch-size", "8", "--physical-batch-size", "4", "--max-length", "48",
    "--lora-r", "4", "--lora-alpha", "8", "--canary-candidates", "16",
]  # fmt: skip


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLIANCE_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env |= {
        "APPLIANCE_DATA_DIR": str(settings.data_dir),
        "APPLIANCE_POLICIES_DIR": str(settings.policies_dir),
        "APPLIANCE_TRAINING__DEVICE": "cpu",
        "PYTHONPATH": str(REPO),
        "COLUMNS": "160",
        "HF_HUB_OFFLINE": "1",
    }
    return env


def _train_cmd(prepared: Path, base: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "appliance", "train", "--dataset", str(prepared), "--base", str(base),
        "--out", str(out), *extra, "--nproc-per-node", "2", "--trained-by", "analyst-7",
    ]  # fmt: skip


def _audit_types(settings: Settings) -> list[str]:
    return [r["type"] for r in audit_records(settings.data_dir / "audit")]


def _checkpoint_step(path: Path) -> int:
    """The step in a checkpoint's (authenticated, plaintext) header."""
    data = path.read_bytes()
    magic = len(b"APPLIANCE-CKPT\x01")
    (size,) = struct.unpack(">I", data[magic : magic + 4])
    return int(json.loads(data[magic + 4 : magic + 4 + size])["step"])


def _descendants(pid: int) -> Iterator[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        yield child
        stack.extend(children.get(child, []))


def _rank_pid(launcher: int, rank: int) -> int | None:
    for pid in _descendants(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"WORLD_SIZE=2" in environ:
            return pid
    return None


@pytest.fixture
def dist_settings(tmp_path: Path, make_policy: Callable[..., Path]) -> Settings:
    """A second, fresh data directory for the distributed run (the single-process run keeps its own)."""
    directory = tmp_path / "var-dist"
    directory.mkdir()
    return load_settings(data_dir=directory, policies_dir=make_policy())


class TestLauncherOptions:
    def test_worker_argv_drops_the_launcher_options(self) -> None:
        """Workers rerun the same command without the options that started them, in either spelling."""
        argv = ["train", "--out", "o", "--nproc-per-node", "2", "--nnodes=2", "--node-rank", "1", "--epsilon", "3"]
        argv += ["--master-addr", "10.0.0.1", "--master-port=29400", "--resume"]
        assert without_launcher_options(argv) == ["train", "--out", "o", "--epsilon", "3", "--resume"]

    def test_one_node_uses_a_standalone_rendezvous(self) -> None:
        """On one node the rendezvous takes a free local port (no collision with another run)."""
        args = LaunchOptions(2).torchrun_args()
        assert "--standalone" in args and "--max-restarts" in args and args[args.index("--max-restarts") + 1] == "0"
        multi = LaunchOptions(4, nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400).torchrun_args()
        assert "--standalone" not in multi and multi[multi.index("--node-rank") + 1] == "1"

    def test_bad_options_are_all_reported(self) -> None:
        """Several nodes without rank 0's address, a node rank out of range and no processes: one error, all three."""
        with pytest.raises(ValidationFailed) as exc:
            LaunchOptions(0, nnodes=2, node_rank=2).check()
        assert "--nproc-per-node" in exc.value.message and "--node-rank" in exc.value.message
        assert "--master-addr" in exc.value.message

    def test_world_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """RANK/WORLD_SIZE/LOCAL_RANK make a world; none, or a world of one, is a single process."""
        assert current_world() is None
        monkeypatch.setenv("WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", "0")
        assert current_world() is None
        monkeypatch.setenv("WORLD_SIZE", "4")
        monkeypatch.setenv("RANK", "3")
        monkeypatch.setenv("LOCAL_RANK", "1")
        world = current_world()
        assert world is not None and (world.rank, world.world_size, world.local_rank, world.is_main) == (3, 4, 1, False)
        monkeypatch.setenv("RANK", "4")
        with pytest.raises(ValidationFailed, match="outside"):
            current_world()

    def test_a_dead_peer_is_recognised(self) -> None:
        """gloo's error when another rank died is a peer failure (resumable); an ordinary error is not."""
        gloo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:10440.")
        assert is_peer_failure(gloo)
        assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_every_rank_takes_every_step_even_with_an_empty_draw(tmp_path: Path) -> None:
    """Opacus's distributed Poisson sampler skips a rank's empty draw (that rank would fall a step behind and
    the all-reduces would pair different steps); the aligned sampler yields it as an empty batch."""
    import torch
    import torch.distributed as dist
    from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        generator = torch.Generator().manual_seed(7)
        opacus_sampler = DistributedUniformWithReplacementSampler(
            total_size=20, sample_rate=0.02, steps=50, generator=generator
        )
        assert len(list(opacus_sampler)) < 50  # P(no empty draw in 50) = (1 - 0.98^20)^50, about 1e-7
        aligned = _step_aligned_sampler(opacus_sampler)
        draws = list(aligned)
        assert len(draws) == 50 and [] in draws
        assert all(0 <= i < 20 for draw in draws for i in draw) and aligned.sample_rate == 0.02
    finally:
        dist.destroy_process_group()


UNITS, BATCH, CLIP, WIDTH = 64, 16, 1.0, 4000  # rate 1/4: 4 steps per pass, expected logical batch 16


def _dp_step_worker(rank: int, store: str, out: str) -> None:
    """One rank: a linear model whose every unit's gradient is 10·e0 (clipped to C·e0), trained with Opacus's
    distributed DP and the step-aligned loader; rank 0 records each step's final gradient and the global rows."""
    import torch
    import torch.distributed as dist
    from opacus import PrivacyEngine
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel
    from torch.utils.data import DataLoader, TensorDataset

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    inputs = torch.zeros(UNITS, WIDTH)
    inputs[:, 0] = 10.0
    record: dict[str, list[Any]] = {}
    for sigma in (0.0, 1.0):
        model = torch.nn.Linear(WIDTH, 1, bias=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        loader = DataLoader(TensorDataset(inputs), batch_size=BATCH)
        _, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=DifferentiallyPrivateDistributedDataParallel(model),
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=sigma,
            max_grad_norm=CLIP,
            poisson_sampling=True,
            wrap_model=False,
            loss_reduction="mean",
            noise_generator=torch.Generator().manual_seed(rank + 1),
        )
        grads, rows = [], []
        for (x,) in step_aligned_loader(loader):
            weight: Any = model.weight
            if x.shape[0] == 0:
                weight.grad_sample = torch.zeros((0, *weight.shape))
            else:
                model(x).mean().backward()
            optimizer.step()
            count = torch.tensor([float(x.shape[0])])
            dist.all_reduce(count)
            other = weight.grad.clone()
            dist.broadcast(other, src=1)  # rank 1's final gradient, to compare with rank 0's
            grads.append(weight.grad.flatten().tolist())
            rows.append(int(count.item()))
            assert torch.equal(other, weight.grad), "the ranks step with different gradients"
            optimizer.zero_grad(set_to_none=True)
        record[str(sigma)] = [grads, rows]
    if rank == 0:
        Path(out).write_text(json.dumps(record))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_clip_sum_and_noise_like_one_process(tmp_path: Path) -> None:
    """Over two gloo ranks each step's gradient is (Σ clipped units of both ranks + N(0, σ²C²)) / B, the
    single-process DP-SGD step: the clipped sum spans both ranks, the noise is added once (not twice, which would
    be √2 too large) and divided by the expected logical batch (not the per-rank one, 2× too large)."""
    import statistics

    import torch.multiprocessing as mp

    out = tmp_path / "grads.json"
    mp.spawn(_dp_step_worker, args=(str(tmp_path / "store"), str(out)), nprocs=2, join=True)
    record = json.loads(out.read_text())
    grads, rows = record["0.0"]
    assert len(rows) == UNITS // BATCH and sum(rows) > 0
    for grad, count in zip(grads, rows, strict=True):
        assert grad[0] == pytest.approx(count * CLIP / BATCH, rel=1e-6) and not any(grad[1:])
    grads, rows = record["1.0"]
    noise = [g for grad in grads for g in grad[1:]]  # coordinates with no signal: noise alone
    assert statistics.pstdev(noise) == pytest.approx(1.0 * CLIP / BATCH, rel=0.05)


@pytest.mark.slow
def test_two_ranks_spend_exactly_what_one_process_spends(
    train_settings: Settings, dist_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """Two gloo ranks: the ledger's noise, rate, steps and epsilon equal the single-process run's, it is charged
    and audited once, and the adapter loads with plain peft. A second run over the budget exits 77 with rank 0's
    PRIVACY_BUDGET_EXHAUSTED (the other rank stops without an error of its own)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    single = TrainingRun(
        make_config(**tiny_options(prepared, tiny_model, tmp_path / "single")), train_settings, audit=MemoryAuditLog()
    )
    single.run()
    (alone,) = Ledger(train_settings.ledger_path).runs()

    out = tmp_path / "adapter"
    cmd = _train_cmd(prepared, tiny_model, out, *TINY, "--checkpoint-every", "50")
    child = subprocess.run(cmd, cwd=REPO, env=_env(dist_settings), capture_output=True, text=True, timeout=400)
    assert child.returncode == 0, child.stderr[-3000:]
    assert "rank=1" in child.stdout + child.stderr  # the second rank did join
    (entry,) = Ledger(dist_settings.ledger_path).runs()
    assert entry.status == "finished" and entry.steps_taken == alone.steps_taken == 4
    assert (entry.noise_multiplier, entry.sample_rate, entry.delta) == (
        alone.noise_multiplier,
        alone.sample_rate,
        alone.delta,
    )
    assert entry.epsilon == pytest.approx(alone.epsilon, rel=1e-12)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dp"]["epsilon"] == pytest.approx(alone.epsilon, rel=1e-12) and meta["trained_by"] == "analyst-7"
    types = _audit_types(dist_settings)
    assert types.count("training.start") == 1 and types.count("training.finish") == 1
    assert not list(dist_settings.runs_dir.glob("*/checkpoint.bin"))

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out))
    lora_b = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b.values())  # peft initialises B to zero

    over = _train_cmd(prepared, tiny_model, tmp_path / "b", *TINY, "--epsilon", "11")  # over the budget of 10
    refused = subprocess.run(over, cwd=REPO, env=_env(dist_settings), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 77, refused.stderr[-3000:]
    assert "PRIVACY_BUDGET_EXHAUSTED" in refused.stderr and "TRAINING_FAILED" not in refused.stderr
    assert [e.status for e in Ledger(dist_settings.ledger_path).runs()].count("refused") == 1


@pytest.mark.slow
def test_two_ranks_train_on_the_same_audit_canaries(
    dist_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """``--audit-canaries`` on two ranks: rank 0 draws which audit canaries are in and broadcasts them, so both
    ranks build the same units (else rank 1 refuses: a different unit count) and the run records its audit."""
    out = tmp_path / "adapter"
    cmd = _train_cmd(prepared, tiny_model, out, *TINY, "--audit-canaries", "8", "--checkpoint-every", "50")
    child = subprocess.run(cmd, cwd=REPO, env=_env(dist_settings), capture_output=True, text=True, timeout=400)
    assert child.returncode == 0, child.stderr[-3000:]
    audit = json.loads((out / "metadata.json").read_text())["privacy_audit"]
    assert audit["m"] == 8 and audit["claimed_epsilon"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1], ids=["rank-1"])  # rank 0 killed takes the same path (checked by hand)
def test_a_killed_rank_fails_the_run_and_resume_completes_it_exactly(
    victim: int, dist_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """SIGKILL of either rank after a checkpoint: the launcher fails with a clear error and exit status, the
    ledger keeps the run open with every step charged, and --resume on two ranks finishes it with the exact
    charge."""
    out = tmp_path / "adapter"
    steps = 12
    options = [*TINY, "--steps", str(steps), "--checkpoint-every", "3"]  # the later --steps wins
    env = _env(dist_settings)
    launcher = subprocess.Popen(
        _train_cmd(prepared, tiny_model, out, *options),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(dist_settings.runs_dir.glob("*/checkpoint.bin")):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
        pid = _rank_pid(launcher.pid, victim)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 70, stderr[-3000:]
    assert "TRAINING_FAILED" in stderr and f"rank {victim} (local rank {victim}) was killed by SIGKILL" in stderr
    assert "--resume" in stderr
    (entry,) = Ledger(dist_settings.ledger_path).runs()
    checkpoint = dist_settings.runs_dir / entry.run_id / "checkpoint.bin"
    saved = _checkpoint_step(checkpoint)
    charged = entry.steps_taken
    assert entry.status == "running" and 3 <= saved <= charged < steps
    assert not out.exists()

    resumed = subprocess.run(
        _train_cmd(prepared, tiny_model, out, "--resume"),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    finished = Ledger(dist_settings.ledger_path).get(entry.run_id)
    total = charged + (steps - saved)  # steps after the checkpoint that ran before the kill count twice
    assert finished.status == "finished" and finished.steps_taken == total
    noise, rate, delta = entry.noise_multiplier, entry.sample_rate, entry.delta
    assert noise is not None and rate is not None and delta is not None
    expected = composed_epsilon([(noise, rate, total)], delta)
    meta = json.loads((out / "metadata.json").read_text())
    assert finished.epsilon == pytest.approx(expected) and meta["dp"]["epsilon"] == pytest.approx(expected)
    assert meta["steps"] == steps
    assert not checkpoint.parent.exists()  # the run directory (canary secrets) goes with the final adapter
    types = _audit_types(dist_settings)
    assert types.count("training.start") == 2  # the run and its resume, by rank 0 alone
    # a surviving rank 0 records the interruption (peer lost, or the launcher's SIGTERM), then the resume finishes
    assert types.count("training.finish") == (2 if victim == 1 else 1)


def test_no_dp_is_refused_on_several_processes(
    dist_settings: Settings, prepared: Path, tiny_model: Path, tmp_path: Path
) -> None:
    """--no-dp with --nproc-per-node is refused before any process starts or anything is charged."""
    cmd = _train_cmd(prepared, tiny_model, tmp_path / "a", "--no-dp", "--steps", "2")
    child = subprocess.run(cmd, cwd=REPO, env=_env(dist_settings), capture_output=True, text=True, timeout=120)
    assert child.returncode == 65 and "DP runs only" in child.stderr
    assert not dist_settings.ledger_path.exists()

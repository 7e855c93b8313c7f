"""Data-parallel DP training: one run over several processes (``torch.distributed``, Opacus's DPDDP).

Every rank is a worker started by ``torch.distributed.run`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in its
environment). Rank 0 is the run: it alone charges the ledger, writes the audit events, checkpoints, the adapter
and its metadata. It prepares the run (ledger check and reservation, plan, canaries, checkpoint on ``--resume``)
and broadcasts what the others need; the others rebuild the same units from the same dataset and take the same
steps. Opacus's distributed pieces do the DP work: ``DifferentiallyPrivateDistributedDataParallel`` (parameters
synchronised from rank 0), ``DistributedUniformWithReplacementSampler`` (each rank Poisson-samples its share of
the units at the run's rate ``q``, so the union is one Poisson sample of rate ``q``) and
``DistributedDPOptimizer`` (each rank clips its rows, rank 0 alone adds the noise ``N(0, σ²C²)``, the sums are
all-reduced and divided by the expected logical batch): the logical batch, the noise and the accounting are those
of the single-process run with the same options.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from appliance.config import Settings
from appliance.errors import ApplianceError, TrainingFailed, ValidationFailed
from appliance.protocols import AuditLog, KeyService
from appliance.training._audit import AuditCanary
from appliance.training._canaries import Canary
from appliance.training._config import TrainConfig
from appliance.training._data import read_prepared
from appliance.training._metadata import now
from appliance.training._phases import Prepared, Resume
from appliance.training._prepare import load_tokenizer, run_units
from appliance.training._run import StepInfo, TrainingRun, TrainResult

__all__ = ["World", "current_world", "run_distributed"]

log = structlog.get_logger("appliance.training")

# what a collective reports when another rank died (gloo: "Connection closed by peer"; NCCL: "NCCL error")
_PEER_FAILURE_MARKERS = ("closed by peer", "reset by peer", "gloo", "nccl", "processgroup", "broken pipe")


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run (from the launcher's environment)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world() -> World | None:
    """The world this process was launched into by ``torch.distributed.run``; None in a single process."""
    size = os.environ.get("WORLD_SIZE")
    if size is None:
        return None
    try:
        world = World(int(os.environ["RANK"]), int(size), int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError) as exc:
        raise ValidationFailed("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers") from exc
    if world.world_size < 1 or not 0 <= world.rank < world.world_size:
        raise ValidationFailed(f"rank {world.rank} is outside a world of {world.world_size}")
    return world if world.world_size > 1 else None


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died (resumable, not the run's fault)."""
    import torch.distributed as dist

    if isinstance(exc, dist.DistError):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in message for marker in _PEER_FAILURE_MARKERS)


def _uses_cuda(config: TrainConfig, settings: Settings) -> bool:
    import torch

    name = config.device if config.device != "auto" else settings.training.device
    return name == "cuda" or (name == "auto" and torch.cuda.is_available())


def _share(payload: Any) -> Any:
    """Rank 0's ``payload`` on every rank (pickled over the process group: the training network is trusted)."""
    import torch.distributed as dist

    box = [payload]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _step_aligned_sampler(sampler: Any) -> Any:
    """Opacus's distributed Poisson sampler, yielding an empty local batch instead of skipping it.

    ``DistributedUniformWithReplacementSampler`` drops a rank's empty draw, so that rank would take one step
    fewer than the others and the all-reduces would pair different steps. The single-process sampler yields
    empty batches (a noisy step all the same); this keeps every rank on the same step.
    """
    from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler

    class StepAlignedDistributedSampler(DistributedUniformWithReplacementSampler):
        def __iter__(self) -> Iterator[list[int]]:
            import torch

            indices = torch.arange(self.total_size)
            if self.shuffle:
                order = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
                indices = torch.randperm(self.total_size, generator=order)
            indices = indices[self.rank : self.total_size : self.num_replicas]
            for _ in range(self.num_batches):
                mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
                yield indices[mask.nonzero(as_tuple=False).reshape(-1)].tolist()

    aligned = StepAlignedDistributedSampler(
        total_size=sampler.total_size,
        sample_rate=sampler.sample_rate,
        shuffle=sampler.shuffle,
        shuffle_seed=sampler.shuffle_seed,
        steps=sampler.num_batches,
        generator=sampler.generator,
    )
    return aligned


def step_aligned_loader(loader: Any) -> Any:
    """Opacus's distributed DP data loader with the step-aligned sampler (same dataset, collate and generator)."""
    from torch.utils.data import DataLoader

    return DataLoader(
        loader.dataset,
        batch_sampler=_step_aligned_sampler(loader.batch_sampler),
        collate_fn=loader.collate_fn,  # Opacus's: an empty draw becomes a zero-row batch
        generator=loader.generator,
    )


class _LeaderStopped(Exception):
    """Rank 0 refused to start the run (its own error, with its exit status, is the run's); this rank stops."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class DistributedTrainingRun(TrainingRun):
    """One rank of a data-parallel run: rank 0 is the run; the others follow it step for step."""

    def __init__(
        self,
        config: TrainConfig,
        settings: Settings,
        world: World,
        *,
        keys: KeyService | None = None,
        audit: AuditLog | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> None:
        if config.no_dp:
            raise ValidationFailed("several processes train DP runs only (--no-dp is a single-process baseline)")
        main = world.is_main
        super().__init__(
            config,
            settings,
            keys=keys if main else None,
            audit=audit if main else None,
            on_step=on_step if main else None,
            on_checkpoint=on_checkpoint if main else None,
            use_stage_factories=main,  # the other ranks never reach the key service, the audit trail or the ledger
        )
        self.world = world
        self.leader_stopped = False  # rank 0 refused the run before it started (this rank trained nothing)

    # --- phase 1: rank 0 prepares and charges; the others receive what they need ------------------------------
    def prepare(self) -> Prepared:
        if not self.world.is_main:
            spec = _share(None)
            if not spec["ok"]:  # rank 0 reports its own error (and exit status); this rank has nothing to do
                raise _LeaderStopped(str(spec["code"]))
            return self._follow(spec)
        try:
            prepared = super().prepare()
        except BaseException as exc:
            _share({"ok": False, "code": exc.code if isinstance(exc, ApplianceError) else type(exc).__name__})
            raise
        _share(
            {
                "ok": True,
                "run_id": self.run_id,
                "config": self.config.model_dump_json(),
                "fingerprint": prepared.dataset.fingerprint,
                "base_sha256": prepared.base_hash,
                "delta": prepared.delta,
                "noise_multiplier": prepared.noise_multiplier,
                "sample_rate": prepared.sample_rate,
                "units": len(prepared.units),
                "canaries": [
                    {"code": c.code, "secret": c.secret, "repetitions": c.repetitions} for c in prepared.canaries
                ],
                "audit_canaries": [[c.code, c.secret, c.included] for c in prepared.audit_canaries],
                "resume_state": self.resume.state if self.resume is not None else None,
            }
        )
        return prepared

    def _follow(self, spec: dict[str, Any]) -> Prepared:
        """Rebuild rank 0's run from its broadcast: same options, dataset, canaries, units and checkpoint."""
        self.config = TrainConfig.model_validate_json(spec["config"])
        self.run_id = str(spec["run_id"])
        dataset = read_prepared(self.config.dataset)
        if dataset.fingerprint != spec["fingerprint"]:
            raise ValidationFailed(f"rank {self.world.rank} reads a different dataset than rank 0 (fingerprint)")
        tokenizer, base_hash = load_tokenizer(self.config.base)
        if base_hash != spec["base_sha256"]:
            raise ValidationFailed(f"rank {self.world.rank} reads a different base model than rank 0 (sha256)")
        canaries = [Canary(c["code"], c["secret"], int(c["repetitions"])) for c in spec["canaries"]]
        audit_canaries = [AuditCanary(str(c), str(s), bool(i)) for c, s, i in spec["audit_canaries"]]
        units = run_units(self.config, tokenizer, dataset, canaries, audit_canaries)
        if len(units) != spec["units"]:
            raise ValidationFailed(f"rank {self.world.rank} built {len(units)} units, rank 0 {spec['units']}")
        if spec["resume_state"] is not None:  # restore reads the checkpoint alone; rank 0 checked the rest
            self.resume = Resume(
                dataset.fingerprint,
                spec["noise_multiplier"],
                spec["sample_rate"],
                spec["delta"],
                int(spec["resume_state"]["step"]),
                spec["resume_state"],
            )
        self._prepared = Prepared(
            dataset=dataset,
            delta=spec["delta"],
            units=units,
            sample_rate=spec["sample_rate"],
            noise_multiplier=spec["noise_multiplier"],
            canaries=canaries,
            audit_canaries=audit_canaries,
            base_hash=base_hash,
            tokenizer=tokenizer,
            started_at=now(),
        )
        return self._prepared

    # --- phase 2: Opacus's distributed wrapper and sampler ----------------------------------------------------
    def _dp_module(self, model: Any) -> Any:
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel

        return DifferentiallyPrivateDistributedDataParallel(model)  # broadcasts rank 0's parameters

    def _dp_loader(self, loader: Any) -> Any:
        return super()._dp_loader(step_aligned_loader(loader))

    # --- rank 0 alone writes ----------------------------------------------------------------------------------
    def _charge_step(self) -> None:
        if self.world.is_main:  # the others cannot take the step before rank 0's noisy all-reduce of it
            super()._charge_step()

    def _checkpoint(self) -> None:
        if self.world.is_main:
            super()._checkpoint()

    def _resumable(self, exc: BaseException) -> bool:
        return super()._resumable(exc) or is_peer_failure(exc)

    def run_rank(self) -> TrainResult | None:
        """Rank 0: the whole run (the result); the others: prepare, build, restore and fit (None)."""
        try:
            if self.world.is_main:
                return self.run()
            try:
                self.prepare()
            except _LeaderStopped as stopped:
                log.info("training.rank_stopped", rank=self.world.rank, leader_error=stopped.code)
                self.leader_stopped = True  # rank 0 has left already: nobody to leave together with
                return None
            self.build()
            self.restore()
            self.fit()
            return None
        except RuntimeError as exc:
            if not is_peer_failure(exc):
                raise
            raise TrainingFailed(
                f"rank {self.world.rank} lost another rank of run {self.run_id or '(not started)'}; the run stays "
                "open in the ledger with every step it charged: rerun with --resume"
            ) from exc


def _leave_together(world: World) -> None:
    """Every rank leaves together: a rank that tears gloo down while rank 0 still evaluates and writes can be
    aborted by its pair threads ("terminate called without an active exception"), failing a finished run. A peer
    already gone (rank 0 refused the run, or failed after it) is no error here: rank 0's own exit decides."""
    import torch.distributed as dist

    try:
        dist.barrier()
    except Exception as exc:
        if not is_peer_failure(exc):
            raise
        log.info("training.rank_left_alone", rank=world.rank)


def _interrupted(signum: int, frame: Any) -> None:
    """SIGTERM from the launcher (another rank failed): an interruption, so rank 0 leaves the run resumable and
    audits it (``training.finish``, resumable) instead of dying silently."""
    raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")


def run_distributed(
    config: TrainConfig,
    settings: Settings,
    world: World,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    **kwargs: Any,
) -> TrainResult | None:
    """This rank's part of a data-parallel run: NCCL on GPUs, gloo on CPU. Rank 0 returns the result."""
    import torch
    import torch.distributed as dist

    signal.signal(signal.SIGTERM, _interrupted)  # the launcher stops the other ranks when one dies
    cuda = _uses_cuda(config, settings)
    if cuda:
        torch.cuda.set_device(world.local_rank)  # "cuda" now means this rank's GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo", rank=world.rank, world_size=world.world_size)
    log.info("training.rank", rank=world.rank, world_size=world.world_size, backend=dist.get_backend())
    try:
        run = DistributedTrainingRun(config, settings, world, on_step=on_step, **kwargs)
        result = run.run_rank()
        if not run.leader_stopped:
            _leave_together(world)
        return result
    finally:
        dist.destroy_process_group()

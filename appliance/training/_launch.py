"""``appliance train --nproc-per-node N``: start the ranks of a data-parallel run with ``torch.distributed.run``.

The launcher re-runs the same ``appliance train`` command (without the launcher's own options) in N worker
processes per node; each worker finds its rank in its environment (``_distributed.current_world``). No restarts:
a rank that dies fails the whole run, the others are stopped by the launcher, and the run stays open in the
ledger with every step it charged, for ``--resume``.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from appliance.errors import TrainingFailed, ValidationFailed

__all__ = ["LAUNCHER_OPTIONS", "LaunchOptions", "launch", "without_launcher_options"]

log = structlog.get_logger("appliance.training")

# the options `appliance train` hands to the launcher (each takes one value); workers never see them
LAUNCHER_OPTIONS = ("--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port")


@dataclass(frozen=True)
class LaunchOptions:
    """Where this node's ranks fit in the run (torchrun's options of the same names)."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None  # rank 0's node; needed with several nodes
    master_port: int | None = None

    def check(self) -> None:
        """Refuse options that cannot form one run (all problems at once)."""
        problems = []
        if self.nproc_per_node < 1:
            problems.append("--nproc-per-node must be at least 1")
        if self.nnodes < 1:
            problems.append("--nnodes must be at least 1")
        if not 0 <= self.node_rank < max(1, self.nnodes):
            problems.append(f"--node-rank must be between 0 and {self.nnodes - 1}")
        if self.nnodes > 1 and (self.master_addr is None or self.master_port is None):
            problems.append("several nodes need --master-addr and --master-port (rank 0's node)")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            problems.append("--master-port must be a TCP port")
        if problems:
            raise ValidationFailed("; ".join(problems))

    def torchrun_args(self) -> list[str]:
        """torchrun's arguments before the worker command."""
        args = ["--nproc-per-node", str(self.nproc_per_node), "--nnodes", str(self.nnodes), "--max-restarts", "0"]
        if self.nnodes == 1 and self.master_addr is None and self.master_port is None:
            return [*args, "--standalone"]  # a free local port: runs on one node never collide
        args += ["--node-rank", str(self.node_rank)]
        if self.master_addr is not None:
            args += ["--master-addr", self.master_addr]
        if self.master_port is not None:
            args += ["--master-port", str(self.master_port)]
        return args


def without_launcher_options(argv: Sequence[str]) -> list[str]:
    """``argv`` less the launcher's options and their values (``--opt value`` and ``--opt=value``)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCHER_OPTIONS:
            skip = True
            continue
        if arg.split("=", 1)[0] in LAUNCHER_OPTIONS and "=" in arg:
            continue
        kept.append(arg)
    return kept


# how a rank ends when the launcher stops it after another rank failed: SIGTERM, or 130 when its handler turned
# the signal into an interruption (the run left resumable)
_STOPPED_BY_LAUNCHER = (-signal.SIGTERM, 130)


def _describe(rank: int, exitcode: int, local_rank: int) -> str:
    if exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with status {exitcode}"
    return f"rank {rank} (local rank {local_rank}) {how}"


def launch(options: LaunchOptions, worker_argv: Sequence[str]) -> int:
    """Run ``python -m appliance *worker_argv`` as this node's ranks; returns 0, or rank 0's own exit status when
    it alone failed (its error is already on stderr). Any other failure is a TrainingFailed naming each rank."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    options.check()
    args = get_args_parser().parse_args([*options.torchrun_args(), "-m", "appliance", *worker_argv])
    log.info("training.launch", **{k: v for k, v in vars(options).items() if v is not None})
    try:
        run(args)
    except ChildFailedError as exc:
        failures = {int(rank): failure for rank, failure in exc.failures.items()}
        own = {r: f for r, f in failures.items() if f.exitcode not in _STOPPED_BY_LAUNCHER}  # not collateral
        only_main = set(own) == {0} and own[0].exitcode > 0
        if only_main and options.node_rank == 0:
            return int(failures[0].exitcode)
        what = "; ".join(_describe(r, f.exitcode, f.local_rank) for r, f in sorted(failures.items()))
        raise TrainingFailed(
            f"the distributed run failed: {what}. A run that had started stays open in the privacy ledger with "
            "every step it charged: rerun the same command with --resume to continue it from its last "
            "checkpoint, or close it with `appliance ledger abandon RUN`"
        ) from None
    return 0

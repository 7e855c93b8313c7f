"""Loss and epsilon curves as PNGs beside the adapter (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["write_curves"]


def write_curves(directory: Path, losses: Sequence[float], epsilons: Sequence[float | None]) -> list[Path]:
    """Write ``loss.png`` and ``epsilon.png`` (one point per optimizer step); returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    steps = list(range(1, len(losses) + 1))
    for name, values, label in (
        ("loss.png", list(losses), "training loss (per-unit mean)"),
        ("epsilon.png", [e if e is not None else float("nan") for e in epsilons], "epsilon spent (RDP)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        if values and any(v == v for v in values):
            ax.plot(steps[: len(values)], values, linewidth=1.4)
        else:
            ax.text(0.5, 0.5, "trained without differential privacy", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths

"""Prepared datasets in, privacy units out: reading, tokenising, grouping per subject, collating.

A *privacy unit* is one row of a batch and the thing DP-SGD clips: one record (``record``), or up to
``max_records_per_subject`` records of one subject packed into one row (``subject``). Each unit carries per-token
loss weights so that its loss is the mean over its records of each record's mean response-token loss; a unit's
loss (and so its gradient) depends on that unit alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.errors import IntakeRejected
from appliance.intake import load_prepared

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["PreparedDataset", "Record", "Unit", "UnitDataset", "build_units", "collate", "encode", "read_prepared"]

_NO_TEMPLATE_PROMPT = "### Instruction:\n{instruction}\n### Response:\n"


@dataclass(frozen=True)
class Record:
    """One training example: the instruction, the response to learn, and the subject's salted digest."""

    instruction: str
    response: str
    subject: str | None = None


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset directory, its verified fingerprint and its records."""

    path: Path
    fingerprint: str
    train: list[Record]
    eval: list[Record]
    source_sha256: str | None = None  # the raw input's SHA-256: the same for every preparation of it


def _source_sha256(manifest: Any) -> str | None:
    """``manifest.source.sha256`` (the raw input's hash), or None when the manifest does not say."""
    source = manifest.get("source") if isinstance(manifest, dict) else None
    digest = source.get("sha256") if isinstance(source, dict) else None
    return digest if isinstance(digest, str) and digest else None


def read_prepared(path: Path) -> PreparedDataset:
    """Read a prepared dataset through ``appliance.intake.load_prepared``, which verifies its manifest, fingerprint,
    counts and subjects; errors name the file, line and field. A split without records is refused."""
    loaded = load_prepared(path)
    train = [Record(r.instruction, r.response, r.subject or None) for r in loaded.train]
    evals = [Record(r.instruction, r.response, r.subject or None) for r in loaded.eval]
    for name, recs in (("train.jsonl", train), ("eval.jsonl", evals)):
        if not recs:
            raise IntakeRejected(f"{path / name}: no records")
    return PreparedDataset(Path(loaded.path), str(loaded.fingerprint), train, evals, _source_sha256(loaded.manifest))


# --- tokenising ------------------------------------------------------------------------------------------------
def prompt_text(tokenizer: PreTrainedTokenizerBase, instruction: str) -> str:
    """The prompt as the model sees it: the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
        )
        return str(text)
    return _NO_TEMPLATE_PROMPT.format(instruction=instruction)


def encode(tokenizer: PreTrainedTokenizerBase, record: Record, max_length: int) -> tuple[list[int], int]:
    """Token ids of prompt + response + EOS, at most ``max_length``, and where the response starts.

    A long prompt loses its middle (its head holds the task, its tail the end of the note and the chat template's
    assistant header) so that at least half the window is left for the response.
    """
    prompt = tokenizer(prompt_text(tokenizer, record.instruction), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token or ""
    response = tokenizer(record.response + eos, add_special_tokens=False)["input_ids"]
    budget = max(2, max_length - min(len(response), max_length // 2))
    if len(prompt) > budget:
        head = budget // 2
        prompt = prompt[:head] + prompt[len(prompt) - (budget - head) :]
    ids = (list(prompt) + list(response))[:max_length]
    return ids, len(prompt)


@dataclass(frozen=True)
class Unit:
    """One privacy unit: token ids and, per position, the weight of that token as a target."""

    ids: list[int]
    weights: list[float]
    records: int


def _segment(ids: list[int], start: int) -> list[float]:
    targets = len(ids) - start
    return [0.0] * start + [1.0 / targets] * targets if targets > 0 else [0.0] * len(ids)


def build_units(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    max_length: int,
    privacy_unit: str,
    max_records_per_subject: int,
    seed: int,
) -> list[Unit]:
    """Group records into privacy units. Per subject, at most k records (chosen at random) are kept."""
    if privacy_unit == "record":
        groups: list[list[Record]] = [[r] for r in records]
    else:
        by_subject: dict[str, list[Record]] = {}
        singles: list[list[Record]] = []
        for r in records:
            if r.subject is None:
                singles.append([r])  # a record without a subject is its own subject
            else:
                by_subject.setdefault(r.subject, []).append(r)
        rng = random.Random(seed)
        groups = []
        for key in sorted(by_subject):
            recs = by_subject[key]
            if len(recs) > max_records_per_subject:
                recs = rng.sample(recs, max_records_per_subject)
            groups.append(recs)
        groups.extend(singles)
    units: list[Unit] = []
    for group in groups:
        ids: list[int] = []
        weights: list[float] = []
        for rec in group:
            seg, start = encode(tokenizer, rec, max_length)
            ids.extend(seg)
            weights.extend(w / len(group) for w in _segment(seg, start))
        units.append(Unit(ids, weights, len(group)))
    return units


class UnitDataset:
    """A map-style dataset of units as tensors (what the DataLoader and Opacus's Poisson sampler index)."""

    def __init__(self, units: Sequence[Unit]) -> None:
        import torch

        self._items = [
            (torch.tensor(u.ids, dtype=torch.long), torch.tensor(u.weights, dtype=torch.float32)) for u in units
        ]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._items[index]


def collate(pad_id: int) -> Any:
    """A collate function padding to the longest unit in the batch: (input_ids, attention_mask, weights)."""
    import torch

    def _collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        length = max((ids.shape[0] for ids, _ in batch), default=1)
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), length), dtype=torch.long)
        weights = torch.zeros((len(batch), length), dtype=torch.float32)
        for row, (ids, w) in enumerate(batch):
            input_ids[row, : ids.shape[0]] = ids
            mask[row, : ids.shape[0]] = 1
            weights[row, : w.shape[0]] = w
        return input_ids, mask, weights

    return _collate

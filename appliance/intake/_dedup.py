"""Exact and near-duplicate removal (runs on scrubbed text, so records that differ only in PHI collapse).

* Exact: records whose normalised instruction and response are equal (NFKC, case-folded, whitespace collapsed).
* Near: MinHash (datasketch, 128 permutations, fixed seed) over word 3-shingles of the normalised pair, indexed in
  an LSH with a Jaccard threshold (default 0.85). An LSH candidate counts as a duplicate only when its estimated
  Jaccard similarity with the record is at or above the threshold. The first occurrence is kept, so the result is
  deterministic for a given input order.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

__all__ = ["DEFAULT_NEAR_THRESHOLD", "DEFAULT_NUM_PERM", "DedupResult", "deduplicate", "normalise"]

DEFAULT_NEAR_THRESHOLD = 0.85  # estimated Jaccard similarity of word 3-shingles
DEFAULT_NUM_PERM = 128
_SHINGLE = 3
_SEED = 1
_TOKEN = re.compile(r"\[[A-Z]+\]|\w+", re.UNICODE)


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True)
class DedupResult:
    """Indices (into the input sequence) of the records kept, and how many of each kind were dropped."""

    kept: list[int]
    exact_duplicates: int
    near_duplicates: int


def _shingles(text: str) -> set[bytes]:
    tokens = _TOKEN.findall(text)
    if len(tokens) < _SHINGLE:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i : i + _SHINGLE]).encode() for i in range(len(tokens) - _SHINGLE + 1)}


def deduplicate(
    pairs: Sequence[tuple[str, str]],
    *,
    near_threshold: float = DEFAULT_NEAR_THRESHOLD,
    num_perm: int = DEFAULT_NUM_PERM,
) -> DedupResult:
    """Drop exact then near duplicates among (instruction, response) pairs; ``near_threshold`` >= 1 disables near."""
    seen: set[bytes] = set()
    kept: list[int] = []
    exact = near = 0
    lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm) if near_threshold < 1.0 else None
    signatures: dict[str, MinHash] = {}
    for index, (instruction, response) in enumerate(pairs):
        norm = normalise(instruction) + "\x1e" + normalise(response)
        key = hashlib.sha256(norm.encode()).digest()
        if key in seen:
            exact += 1
            continue
        seen.add(key)
        if lsh is not None:
            mh = MinHash(num_perm=num_perm, seed=_SEED)
            mh.update_batch(list(_shingles(norm)))
            if any(signatures[c].jaccard(mh) >= near_threshold for c in lsh.query(mh)):
                near += 1
                continue
            name = str(index)
            lsh.insert(name, mh)
            signatures[name] = mh
        kept.append(index)
    return DedupResult(kept, exact, near)

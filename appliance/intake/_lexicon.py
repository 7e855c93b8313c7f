"""The multi-locale name lexicon shipped in ``data/names.tsv.gz`` (built by ``scripts/deid/build_lexicons.py`` from
Faker's person providers and the 1990 US Census), loaded lazily once."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["Lexicon", "lexicon"]


@dataclass(frozen=True)
class Lexicon:
    """Upper-case tokens: given names, surnames, particles (van, de, la), words that are also common English, and in
    how many source locales each name occurs."""

    given: frozenset[str]
    surnames: frozenset[str]
    particles: frozenset[str]
    common: frozenset[str]
    locales: dict[str, int]
    names: frozenset[str]  # given names and surnames together


@lru_cache(maxsize=1)
def lexicon() -> Lexicon:
    raw = (resources.files("appliance.intake") / "data" / "names.tsv.gz").read_bytes()
    given: set[str] = set()
    surnames: set[str] = set()
    particles: set[str] = set()
    common: set[str] = set()
    locales: dict[str, int] = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        token, flags, count = line.split("\t")
        for flag, bucket in (("g", given), ("s", surnames), ("p", particles), ("c", common)):
            if flag in flags:
                bucket.add(token)
        locales[token] = int(count)
    return Lexicon(
        frozenset(given),
        frozenset(surnames),
        frozenset(particles),
        frozenset(common),
        locales,
        frozenset(given | surnames),
    )

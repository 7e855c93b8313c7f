"""Token features of the name tagger: shape, case, lexicon membership, affixes, clinical allow-list and label words,
for the token and its two neighbours on each side. Per-token features are cached, so a note costs one dictionary
look-up per token and offset."""

from __future__ import annotations

import re
from functools import lru_cache

from appliance.intake._clinical import DRUGS, EPONYMS, UNITS
from appliance.intake._lexicon import lexicon

__all__ = ["TOKEN", "sequence_features"]

# a scrubber placeholder ("[NAME]", "[NAME]#2": one token of its own class, so that a second pass over scrubbed
# text reads it as what it stands for), words (letters of any script, inner apostrophes, not a possessive 's),
# numbers, or one other character; the standard library's [^\W\d_] is every letter (composed forms, NFC)
TOKEN = re.compile(r"\[[A-Z]{2,10}\](?:#\d+)?|[^\W\d_]+(?:['’](?![sS]\b)[^\W\d_]+)*|\d+|[^\s]")
_OFFSETS = (-2, -1, 1, 2)

_TITLES = frozenset(
    ["dr", "mr", "mrs", "ms", "mx", "miss", "prof", "doctor", "sir", "madam", "mister", "sister", "brother", "nurse"]
)
_CREDENTIALS = frozenset(
    [
        "md",
        "do",
        "rn",
        "np",
        "pa",
        "phd",
        "dnp",
        "cnm",
        "crna",
        "lpn",
        "mbbs",
        "frcp",
        "dds",
        "pharmd",
        "aprn",
        "msn",
        "bsn",
        "pa-c",
    ]
)
_RELATIONS = frozenset(
    [
        "son",
        "daughter",
        "wife",
        "husband",
        "mother",
        "father",
        "brother",
        "sister",
        "partner",
        "spouse",
        "niece",
        "nephew",
        "aunt",
        "uncle",
        "grandson",
        "granddaughter",
        "grandmother",
        "grandfather",
        "family",
        "friend",
        "neighbour",
        "neighbor",
        "guardian",
        "caregiver",
        "mom",
        "dad",
    ]
)
_LABELS = frozenset(
    [
        "name",
        "patient",
        "pt",
        "attending",
        "signed",
        "dictated",
        "by",
        "from",
        "to",
        "cc",
        "re",
        "dear",
        "hi",
        "hello",
        "thanks",
        "regards",
        "sincerely",
        "covering",
        "primary",
        "referral",
        "contact",
        "kin",
        "seen",
        "reply",
        "team",
    ]
)


def _shape(tok: str) -> str:
    out: list[str] = []
    for ch in tok[:6]:
        c = "X" if ch.isupper() else "x" if ch.islower() else "d" if ch.isdigit() else ch
        if not out or out[-1] != c:
            out.append(c)
    return "".join(out)


@lru_cache(maxsize=200_000)
def _own(tok: str) -> tuple[str, ...]:
    lex = lexicon()
    low, up = tok.lower(), tok.upper()
    if tok[0] == "[" and len(tok) > 3:  # a placeholder: its type only
        return ("b", "ph=" + tok[1 : tok.index("]")])
    feats = ["b", "sh=" + _shape(tok)]
    if tok[0].isalpha():
        g, s = up in lex.given, up in lex.surnames
        common = up in lex.common
        if g:
            feats.append("lg")
        if s:
            feats.append("ls")
        if up in lex.particles:
            feats.append("lp")
        if common:
            feats.append("lc")
        n = lex.locales.get(up, 0)
        if n:
            feats.append("lf=" + ("1" if n == 1 else "2" if n < 5 else "5"))
        if not (g or s) or common or len(tok) <= 2:
            feats.append("w=" + low)
        if len(tok) > 3:
            feats.append("s3=" + low[-3:])
            feats.append("s2=" + low[-2:])
            feats.append("p2=" + low[:2])
        if not tok.isascii():
            feats.append("nonascii")
        if low in DRUGS or low in UNITS:
            feats.append("drug")
        if low in EPONYMS:
            feats.append("epo")
        if low in _TITLES:
            feats.append("title")
        if low in _CREDENTIALS:
            feats.append("cred")
        if low in _RELATIONS:
            feats.append("rel")
        if low in _LABELS:
            feats.append("label")
        feats.append("len=" + str(min(len(tok), 8)))
    elif tok.isdigit():
        feats.append("dlen=" + str(min(len(tok), 9)))
    else:
        feats.append("w=" + tok)
    return tuple(feats)


_NEIGHBOUR_KEEP = (
    "ph=",
    "sh=",
    "lg",
    "ls",
    "lp",
    "lc",
    "w=",
    "title",
    "cred",
    "rel",
    "label",
    "drug",
    "epo",
    "nonascii",
)


_FAR_KEEP = ("ph=", "sh=", "lg", "ls", "title", "rel", "label")  # two tokens away: shape, lexicon and label words only


@lru_cache(maxsize=200_000)
def _views(tok: str) -> tuple[tuple[str, ...], ...]:
    """The token's own features, then its features as seen from each offset in ``_OFFSETS``."""
    own = _own(tok)
    near = [f for f in own if f.startswith(_NEIGHBOUR_KEEP)]
    far = [f for f in own if f.startswith(_FAR_KEEP) and not f.startswith("w=")]
    return (own, *(tuple(f"{off}:{f}" for f in (near if abs(off) == 1 else far)) for off in _OFFSETS))


def sequence_features(text: str, mode: str) -> tuple[list[tuple[int, int]], list[list[str]]]:
    """Token spans of ``text`` and each token's feature strings; ``mode`` is the text's letter case
    ("upper", "lower" or "")."""
    spans: list[tuple[int, int]] = []
    views: list[tuple[tuple[str, ...], ...]] = []
    toks: list[str] = []
    for m in TOKEN.finditer(text):
        spans.append(m.span())
        tok = m.group()
        toks.append(tok)
        views.append(_views(tok))
    n = len(toks)
    doc = "mode=" + (mode or "mixed")
    xseq: list[list[str]] = []
    prev_end = 0
    for i in range(n):
        start, end = spans[i]
        feats = [*views[i][0], doc]
        if i == 0 or "\n" in text[prev_end:start]:
            feats.append("bol")
        if i + 1 == n or "\n" in text[end : spans[i + 1][0]]:
            feats.append("eol")
        if i + 2 < n and toks[i + 1] in ("'", "’") and toks[i + 2] == "s":
            feats.append("poss")
        for k, off in enumerate(_OFFSETS, start=1):
            j = i + off
            if 0 <= j < n:
                feats.extend(views[j][k])
            else:
                feats.append(f"{off}:edge")
        xseq.append(feats)
        prev_end = end
    return spans, xseq

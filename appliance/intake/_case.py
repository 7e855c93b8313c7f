"""Letter case of a whole text: an ALL-CAPS or all-lower-case note word-cased, so rules written for ordinary case
apply to it. Shared by the scrubber (``_scrub``) and the residual name check (``_suspects``)."""

from __future__ import annotations

import re

__all__ = ["STATES", "case_normalised"]

# US state and territory abbreviations (addresses, ZIP context; upper case in a word-cased copy after ", ").
STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|OK|"
    "OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC|PR"
)
_STATE_SET = frozenset(STATES.split("|"))

_PLACEHOLDER_WORD = re.compile(r"\[[A-Z]{2,10}\]")
_UPPER = re.compile(r"[^\W\d_a-z]")  # letters that are not ASCII lower case (approximately: upper case)
_LOWER = re.compile(r"[a-z]")
_LONG_WORD = re.compile(r"(?<![\w-])[^\W\d_]{4,}(?![\w-])")  # 4+ letters, no digit: not "CKD3", "DM2", "NAD"


def case_normalised(text: str) -> tuple[str, str]:
    """A word-cased copy of an ALL-CAPS or all-lower-case text, same length, and which of the two it was.

    "JOHN SMITH" / "john smith" -> "John Smith", so the rules written for ordinary case apply to the copy; a
    state abbreviation after ", " is upper case in the copy ("boston, ma 02115" -> "Boston, MA 02115"). Text in
    ordinary case is returned unchanged with mode "".
    """
    letters_of = _PLACEHOLDER_WORD.sub("", text) if "[" in text else text  # "[NAME]" says nothing of the case
    upper, lower = len(_UPPER.findall(letters_of)), len(_LOWER.findall(letters_of))
    letters = upper + lower
    if letters < 8:
        return text, ""
    if upper >= 0.6 * letters and _words_mostly_capitals(letters_of):
        mode = "upper"
    elif upper <= 0.005 * letters:
        mode = "lower"
    else:
        return text, ""

    def one(c: str, up: bool) -> str:
        changed = c.upper() if up else c.lower()
        return changed if len(changed) == 1 else c

    def word_case(m: re.Match[str]) -> str:
        word = m.group(0)
        if m.start() > 0 and text[m.start() - 1] == "[" and text[m.end() : m.end() + 1] == "]" and word.isupper():
            return word  # a placeholder stays as the scrubber wrote it
        if word.upper() in _STATE_SET and (mode == "upper" or text[max(0, m.start() - 2) : m.start()] == ", "):
            return "".join(one(c, True) for c in word)
        return one(word[0], True) + "".join(one(c, False) for c in word[1:])

    return re.sub(r"[^\W\d_]+", word_case, text), mode


def _words_mostly_capitals(text: str) -> bool:
    """Whether the words of 4+ letters are mostly in capitals: a mixed-case note dense with acronyms ("PMH: HTN,
    DM2, CKD3. Meds: ASA 81, Lipitor 40") has most of its letters in capitals but not its words. Fewer than two
    such words: the letter count alone decides."""
    words = _LONG_WORD.findall(text)
    if len(words) < 2:
        return True
    return sum(w.isupper() for w in words) >= 0.6 * len(words)

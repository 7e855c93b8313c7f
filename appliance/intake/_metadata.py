"""Metadata rules: keys that say what their value is, and the identifier values a record's metadata declares.

A value under an identifier key becomes that key's placeholder as a whole; the same value is replaced wherever it
stands in the record's text (``declared_patterns``), and a name field's tokens are names everywhere in the record.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from appliance.intake._names import labelled_name_tokens
from appliance.intake._scrub import SEPARATORS

__all__ = ["LONG_NUMBER", "Declared", "declared_patterns", "is_placeholder", "key_type", "labelled_names", "strings"]

# Metadata keys that say what their value is: the whole value (string or number) becomes that placeholder. Keys
# are matched in a normal spelling ("patientId", "Patient Name", "medical-record-number" -> "patient_id",
# "patient_name", "medical_record_number"), after optional qualifiers ("home_phone", "patient_mrn") and with an
# optional number suffix ("mrn_number", "ssn_no").
_QUAL = (
    r"(?:(?:patient|pt|home|work|office|mobile|cell|primary|secondary|alt|alternate|emergency|contact|guarantor"
    r"|subscriber|mailing|billing|current|previous|prior|personal|mother|father|spouse|guardian|kin|next_of_kin)_)*"
)
_NUM = r"(?:_?(?:number|no|num|nbr|id))?"
_KEY_TYPES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^{_QUAL}(?:{p})$"), kind)
    for p, kind in (
        (
            r"(?:first_?|last_?|full_?|given_?|family_?|middle_?|maiden_?|sur)?name|(?:provider|physician|doctor|nurse)(?:_?name)?",
            "NAME",
        ),
        (r"dob|birth_?date|date_?of_?birth|admi(?:t|ssion)_?date|discharge_?date|death_?date|visit_?date", "DATE"),
        (rf"(?:phone|tel|telephone|mobile|cell|pager){_NUM}", "PHONE"),
        (rf"fax{_NUM}", "FAX"),
        (r"e?_?mail(?:_?addr(?:ess)?)?", "EMAIL"),
        (rf"(?:ssn|social_?security){_NUM}|ssn_last_?4", "SSN"),
        (rf"(?:mrn|medical_?record|med_?rec){_NUM}|(?:chart|hospital|record)_?(?:number|no|num|nbr)", "MRN"),
        (rf"(?:account|acct|bank_?account|credit_?card|card|iban){_NUM}", "ACCOUNT"),
        (rf"(?:(?:drivers?_?)?licen[cs]e|npi|dea|passport){_NUM}", "LICENSE"),
        (rf"(?:vin|plate|license_?plate){_NUM}", "VEHICLE"),
        (rf"(?:serial|device_?id|udi|imei){_NUM}", "DEVICE"),
        (r"url|website|homepage", "URL"),
        (r"ip|ip_?address", "IP"),
        (r"address(?:_?line_?\d)?|addr|street|street_?address|city|county|town", "ADDRESS"),
        (r"zip|zip_?code|zip_?4|postal_?code|postcode", "ZIP"),
        (
            r"(?:member|policy|insurance|beneficiary|health_?plan|subscriber|patient|pt|person|encounter|visit"
            r"|admission|case|claim|employee|group)_?(?:id|identifier|number|no|num|nbr)|id|identifier",
            "ID",
        ),
    )
]
LONG_NUMBER = 10_000  # an integer in metadata at or above this is treated as an identifier

# It must look like an identifier: 5 or more digits when it is all digits (shorter numbers are years, doses and
# lab values: a declared "1234" or "12" is not carried), 4 or more letters and digits when it has a letter (it must
# then match as a whole word: "Reno" but not "Ada"). Matching ignores case and Unicode dashes, takes any
# separator (space, . - / parentheses) where the value has one, and digit grouping where it has none
# ("7654321" also matches "765 4321" and "765-4321").
_MIN_DIGITS, _MIN_ALNUM = 5, 4
_GAP = r"[\s.\-/()]{0,3}"  # where the value has a separator
_GROUP = r"[\s\-]?"  # between digits, or a letter and a digit, where it has none
Declared = tuple[tuple[re.Pattern[str], str], ...]


def _declared_values(value: Any, kind: str | None = None) -> Iterator[tuple[str, str | int]]:
    """(kind, value) of every scalar under an identifier key. An object or list under one declares all its
    scalars ({"mrn": {"value": ...}}, FHIR's "identifier": [{"value": ...}]), unless a key inside names another."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _declared_values(v, key_type(k) or kind)
    elif isinstance(value, list):
        for v in value:
            yield from _declared_values(v, kind)
    elif kind is not None and isinstance(value, str | int) and not isinstance(value, bool):
        yield kind, value


def declared_patterns(value: Any) -> Declared:
    """Patterns for the identifier values declared under identifier keys (names excepted: they are tokens)."""
    found: dict[str, str] = {}
    for kind, v in _declared_values(value):
        if kind == "NAME":
            continue
        text = str(v).translate(SEPARATORS)
        for part in [text, *re.split(r"[,;\n]", text)]:  # "12 Elm St, Reno": the street, the city
            regex = _declared_regex(part)
            if regex is not None:
                found.setdefault(regex, kind)
    return tuple((re.compile(r, re.IGNORECASE), kind) for r, kind in found.items())


def _declared_regex(value: str) -> str | None:
    """A regex for ``value`` (see _MIN_DIGITS), or None when it is too short to be told from other text."""
    chars = [c for c in value if c.isalnum()]
    digits_only = all(c.isdigit() for c in chars)
    if len(chars) < (_MIN_DIGITS if digits_only else _MIN_ALNUM) or is_placeholder(value):
        return None
    out: list[str] = []
    prev, gap = "", False
    for c in value.strip():
        if c.isspace() or c in ".-/()":
            gap = True
            continue
        if prev:
            if gap:
                out.append(_GAP)
            elif c.isalnum() and prev.isalnum() and (c.isdigit() or prev.isdigit()):
                out.append(_GROUP)
        out.append(re.escape(c))
        prev, gap = c, False
    # whole values only: not inside a longer word or number ("17654321", "7654321.5", "0.02115")
    return r"(?<![^\W_])(?<!\d[.,])" + "".join(out) + r"(?![^\W_])(?![.,]\d)"


def labelled_names(value: Any) -> set[str]:
    """Name tokens of the strings under keys that say they hold a name (``patient_name``, ``physician``...)."""
    return {
        t
        for kind, v in _declared_values(value)
        if kind == "NAME" and isinstance(v, str)
        for t in labelled_name_tokens(v)
    }


def key_type(key: str | None) -> str | None:
    if not key:
        return None
    norm = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key[:100])  # camelCase -> camel_Case
    norm = re.sub(r"[^a-z0-9]+", "_", norm.lower()).strip("_")
    for pattern, kind in _KEY_TYPES:
        if pattern.match(norm):
            return kind
    return None


def is_placeholder(value: str) -> bool:
    return re.fullmatch(r"\[[A-Z]+\]", value.strip()) is not None


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)

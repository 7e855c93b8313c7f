"""Name and place spans from the CRF tagger, combined with the clinical allow-list.

The scrubber takes a token as a name when the rules or the tagger say so (tagger probability at or above
``NAME_THRESHOLD``), unless the allow-list protects it (a drug, a unit, an eponym before ``'s`` or a clinical head
noun). :func:`suspect_name_spans` runs the same tagger at a lower threshold, for a residual check over text that was
already scrubbed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

import regex

from appliance.intake._case import case_normalised
from appliance.intake._clinical import CLINICAL_WORDS, UNITS, is_protected
from appliance.intake._lexicon import Lexicon, lexicon
from appliance.intake._names import COMMON_WORDS
from appliance.intake._tagger import tag_probabilities

__all__ = [
    "NAME_THRESHOLD",
    "PLACE_THRESHOLD",
    "SUSPECT_THRESHOLD",
    "is_protected_span",
    "suspect_name_spans",
    "tagged_spans",
]

NAME_THRESHOLD = 0.5  # P(name) at or above which the scrubber replaces a token
PLACE_THRESHOLD = 0.2  # P(place) from which a token is part of an [ADDRESS] (0.5 before stop 14: see README)
SUSPECT_THRESHOLD = 0.2  # the residual check's default: report more, replace nothing
_LOWER_IN_MIXED = 0.8  # P(name) a word needs where case or position makes it doubtful (see _could_be_name)
_FEW_WORDS = 4  # a lower-case text of fewer words than this has too little context for the tagger
_UNKNOWN_IN_CAPS = 0.95  # P(name) a word outside the name lexicon needs in ALL-CAPS text
# countries (and the words of their names): Safe Harbor keeps them, so they are neither a place to remove nor,
# unless a given name ("Jordan", "Georgia"), a person ("[ADDRESS], Germany")
_COUNTRY_WORDS = frozenset(
    [
        "afghanistan",
        "albania",
        "algeria",
        "andorra",
        "angola",
        "argentina",
        "armenia",
        "australia",
        "austria",
        "azerbaijan",
        "bahamas",
        "bahrain",
        "bangladesh",
        "barbados",
        "belarus",
        "belgium",
        "belize",
        "benin",
        "bhutan",
        "bolivia",
        "bosnia",
        "herzegovina",
        "botswana",
        "brazil",
        "brunei",
        "bulgaria",
        "burkina",
        "faso",
        "burundi",
        "cambodia",
        "cameroon",
        "canada",
        "chile",
        "china",
        "colombia",
        "comoros",
        "congo",
        "croatia",
        "cuba",
        "cyprus",
        "czechia",
        "czech",
        "denmark",
        "djibouti",
        "dominica",
        "ecuador",
        "egypt",
        "eritrea",
        "estonia",
        "eswatini",
        "ethiopia",
        "fiji",
        "finland",
        "france",
        "gabon",
        "gambia",
        "germany",
        "ghana",
        "greece",
        "grenada",
        "guatemala",
        "guinea",
        "guyana",
        "haiti",
        "honduras",
        "hungary",
        "iceland",
        "india",
        "indonesia",
        "iran",
        "iraq",
        "ireland",
        "italy",
        "jamaica",
        "japan",
        "kazakhstan",
        "kenya",
        "kiribati",
        "korea",
        "kosovo",
        "kuwait",
        "kyrgyzstan",
        "laos",
        "latvia",
        "lebanon",
        "lesotho",
        "liberia",
        "libya",
        "liechtenstein",
        "lithuania",
        "luxembourg",
        "madagascar",
        "malawi",
        "malaysia",
        "maldives",
        "mali",
        "malta",
        "mauritania",
        "mauritius",
        "mexico",
        "micronesia",
        "moldova",
        "monaco",
        "mongolia",
        "montenegro",
        "morocco",
        "mozambique",
        "myanmar",
        "namibia",
        "nauru",
        "nepal",
        "netherlands",
        "nicaragua",
        "niger",
        "nigeria",
        "macedonia",
        "norway",
        "oman",
        "pakistan",
        "palau",
        "palestine",
        "panama",
        "papua",
        "paraguay",
        "peru",
        "philippines",
        "poland",
        "portugal",
        "qatar",
        "romania",
        "russia",
        "rwanda",
        "samoa",
        "senegal",
        "serbia",
        "seychelles",
        "singapore",
        "slovakia",
        "slovenia",
        "somalia",
        "spain",
        "sudan",
        "suriname",
        "sweden",
        "switzerland",
        "syria",
        "taiwan",
        "tajikistan",
        "tanzania",
        "thailand",
        "togo",
        "tonga",
        "trinidad",
        "tobago",
        "tunisia",
        "turkey",
        "turkmenistan",
        "tuvalu",
        "uganda",
        "ukraine",
        "uruguay",
        "uzbekistan",
        "vanuatu",
        "venezuela",
        "vietnam",
        "yemen",
        "zambia",
        "zimbabwe",
        "england",
        "scotland",
        "wales",
        "usa",
        "uk",
        "america",
        "emirates",
        "kingdom",
        "zealand",
        "africa",
        "arabia",
        "lanka",
        "rica",
        "salvador",
        "republic",
        "states",
    ]
)
_VERB_FORM = regex.compile(r"\p{L}{3,}(?:ed|ing)").fullmatch
_TITLE_BEFORE = regex.compile(r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Miss|Doctor|Sister|Nurse)\.?\s+$", regex.IGNORECASE)
_INITIAL_CREDENTIAL_AFTER = regex.compile(r"\s+\p{Lu}\.\s*\((?:RN|NP|LPN|MD|DO|PA|CNA|BSN|MSN|APRN|DNP)\b")
_LETTERS = regex.compile(r"\p{L}+")
_LOWER_NEXT = regex.compile(r"[ \t]+\p{Ll}")
_STATE_CODE = regex.compile(r"[A-Z]{2}")  # "SC", "MA": a state alone is not a place Safe Harbor removes
_PLACEHOLDER = regex.compile(r"\[[A-Z]+\]")
_JOIN_PLACE = regex.compile(r"[ \t]*[,\-/.]?[ \t]*")  # between two place tokens of one address


def is_protected_span(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is clinical vocabulary in its context (see ``_clinical.is_protected``); a unit
    letter after a slash or digit ("mmol/L", "x10^9/L", "5 L") too."""
    word = text[start:end]
    if not word.isascii():  # "Guillain-Barré", "Sjögren": the allow-list is written without accents
        word = _fold(word)
    low = word.lower()
    if low not in CLINICAL_WORDS and low.partition("-")[0] not in CLINICAL_WORDS:
        return False  # the common case, decided by one set look-up
    if _TITLE_BEFORE.search(text, max(0, start - 12), start):  # "Dr. Foley", "Mr. Wilson's wife": a person
        return False
    if _INITIAL_CREDENTIAL_AFTER.match(text[end : end + 24]):  # "Line J. (NP)": a clinician's given name
        return False
    if word.lower() in UNITS and start > 0 and (text[start - 1] in "/^" or text[start - 1 : start].isdigit()):
        return True
    return is_protected(word, text[end : end + 40])


def _fold(word: str) -> str:
    """``word`` without combining accents, same length when every letter decomposes to one base letter."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return folded if len(folded) == len(word) else word


def _inside_placeholder(text: str, start: int) -> bool:
    return start > 0 and text[start - 1] == "[" and _PLACEHOLDER.match(text, start - 1) is not None


def _could_be_name(word: str, mode: str, lex: Lexicon, p_name: float) -> bool:
    """A tagged word is kept as a name unless it is a common English or clinical word ("Cardiology", "said") or a
    lone capital ("S/N") or a short acronym in mixed-case text ("DEA", "MAC"); in ALL-CAPS text, where every word
    looks like a heading, only a lexicon name is; a lower-case or ALL-CAPS word in mixed-case text ("Dr. review")
    must be a lexicon name or tagged with high confidence."""
    if word.lower() in COMMON_WORDS or len(word) == 1:
        return False
    if mode == "" and word.isupper() and len(word) <= 3:  # "DEA", "MAC", "ICU": acronyms, not names
        return False
    if mode == "upper":  # a name outside the lexicon ("HEUSAREK, ARNEO") needs the tagger to be near certain
        return p_name >= (_LOWER_IN_MIXED if word.upper() in lex.names else _UNKNOWN_IN_CAPS)
    if mode == "" and (word[0].islower() or word.isupper()):
        if word.upper() in lex.names:
            return True
        # "picked", "asking": a lower-case verb form outside the lexicon is not a name however sure the tagger is
        return p_name >= _LOWER_IN_MIXED and not (word[0].islower() and _VERB_FORM(word))
    return True


def _opens_sentence(text: str, start: int, end: int) -> bool:
    """Whether the word at ``start:end`` begins a sentence or line and a lower-case word follows it."""
    before = text[max(0, start - 3) : start].rstrip(" \t")
    return (not before or before[-1] in ".!?\n") and _LOWER_NEXT.match(text, end) is not None


def _is_place(text: str, mode: str) -> bool:
    """A place span holds a word of 3+ letters that is not a common word ("HR 72, RR 16", "in 6 weeks" are not
    places), capitalised in mixed-case text."""
    return any(
        len(w) >= 3 and w.lower() not in COMMON_WORDS and (mode or w[0].isupper()) for w in _LETTERS.findall(text)
    )


def tagged_spans(
    text: str,
    mode: str,
    name_threshold: float = NAME_THRESHOLD,
    place_threshold: float = PLACE_THRESHOLD,
    *,
    strict_openers: bool = False,
) -> tuple[list[tuple[int, int]], set[str], list[tuple[int, int]]]:
    """(name spans, name tokens to propagate, place spans) that the tagger finds in ``text``. ``strict_openers``:
    a doubtful sentence opener is excused only by the given-name lexicon (not by a surname list that also holds
    "Draft" or "Review"), and a lower-case word in mixed-case text needs P >= 0.8 whatever the lexicon says, for
    the low threshold of the residual check."""
    names: list[tuple[int, int]] = []
    tokens: set[str] = set()
    places: list[tuple[int, int]] = []
    lex = lexicon()
    # a few lower-case words ("iron supplement", a field or an answer) give the tagger no context: every word of
    # the word-cased copy looks like a name. There only a given name of the lexicon is taken from it.
    few_lower = mode == "lower" and len(_LETTERS.findall(text)) < _FEW_WORDS
    for start, end, p_name, p_place in tag_probabilities(text, mode, min(name_threshold, place_threshold)):
        if p_name < name_threshold and p_place < place_threshold:
            continue
        if _inside_placeholder(text, start) or is_protected_span(text, start, end):
            continue
        word = text[start:end]
        if word.lower() in _COUNTRY_WORDS and (p_name < p_place or word.upper() not in lex.given):
            continue
        if p_name >= name_threshold and p_name >= p_place:
            if not any(c.isalpha() for c in word) or not _could_be_name(word, mode, lex, p_name):
                continue
            if few_lower and word.upper() not in lex.given:
                continue
            # "Draft a letter...", "Classify the...": a capitalised first word before a lower-case one is more
            # often a verb than a name; outside the lexicon it needs high confidence
            if strict_openers and mode == "" and word[0].islower() and p_name < _LOWER_IN_MIXED:
                continue  # residual pass: a lower-case word in mixed-case text ("iron-deficiency anaemia") needs 0.8
            excused = word.upper() in (lex.given if strict_openers else lex.names)
            if mode == "" and p_name < _LOWER_IN_MIXED and not excused and _opens_sentence(text, start, end):
                continue
            names.append((start, end))
            if len(word) >= 3 and word.isalpha():
                tokens.add(word)
        elif (
            p_place >= (max(place_threshold, _LOWER_IN_MIXED) if mode == "upper" else place_threshold)
            and word.lower() not in COMMON_WORDS
            and not _STATE_CODE.fullmatch(word)
        ):  # in ALL-CAPS text, where every word looks like a heading, a place word too needs P >= 0.8
            if places and _JOIN_PLACE.fullmatch(text, places[-1][1], start):
                places[-1] = (places[-1][0], end)
            else:
                places.append((start, end))
    # a number alone is not a place ("in 2019"), nor an abbreviation ("HR 72"): a place span needs a real word
    return names, tokens, [(s, e) for s, e in places if _is_place(text[s:e], mode)]


def suspect_name_spans(text: str, threshold: float = SUSPECT_THRESHOLD) -> list[tuple[int, int]]:
    """Spans of ``text`` that the tagger thinks may be a person's name at ``threshold`` (placeholders and clinical
    vocabulary excepted): for a residual check over scrubbed text. Never logs or returns the text itself."""
    _, mode = case_normalised(text)
    names, _, _ = tagged_spans(text, mode, name_threshold=threshold, place_threshold=2.0, strict_openers=True)
    return names


def drop_protected(text: str, spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``spans`` without those the clinical allow-list protects."""
    return [(s, e) for s, e in spans if not is_protected_span(text, s, e)]

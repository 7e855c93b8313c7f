"""Synthetic labelled clinical notes for training and measuring the name tagger (build time only: needs Faker).

A note is a discharge summary, nursing note, referral letter, patient message thread or sign-out list, built from
sentence templates whose slots are filled with Faker people, places and numbers from many locales, in every name form
the scrubber must handle (``Last, First``, ``SURNAME, GIVEN``, initials, particles, ``First L. (RN)``, possessives,
lower case, a given name alone after a relation word...). Each PHI value is labelled with its type (and, for names,
the role: patient, relative, clinician); clinical phrases that must survive (drugs, doses, labs, eponyms) are listed
in ``keep``. Templates come in two disjoint families: ``"train"`` (the tagger's training notes) and ``"heldout"``
(measurement and tests), so a score on held-out notes is not a score on the sentences the model saw.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from appliance.intake._tagger._templates import TEMPLATES

__all__ = ["Note", "Phi", "generate_notes", "translit"]

_CYRILLIC = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюяієїґ",
        [
            "a",
            "b",
            "v",
            "g",
            "d",
            "e",
            "e",
            "zh",
            "z",
            "i",
            "y",
            "k",
            "l",
            "m",
            "n",
            "o",
            "p",
            "r",
            "s",
            "t",
            "u",
            "f",
            "kh",
            "ts",
            "ch",
            "sh",
            "shch",
            "-",
            "y",
            "-",
            "e",
            "yu",
            "ya",
            "i",
            "ye",
            "yi",
            "g",
        ],
        strict=True,
    )
)


def translit(name: str) -> str:
    """Cyrillic letters written in Latin ones (a fixed table), other characters unchanged."""
    out = []
    for ch in name:
        low = ch.lower()
        if low in _CYRILLIC:
            rep = _CYRILLIC[low].replace("-", "")
            out.append(rep.capitalize() if ch != low else rep)
        else:
            out.append(ch)
    return "".join(out)


@dataclass(frozen=True)
class Phi:
    """One identifier in a note: where it is, its placeholder type and (names) the person's role."""

    start: int
    end: int
    kind: str
    role: str = ""


@dataclass
class Note:
    """A generated note with its labelled identifiers and the clinical phrases that must survive scrubbing."""

    text: str
    kind: str
    phi: list[Phi] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    def value(self, phi: Phi) -> str:
        return self.text[phi.start : phi.end]


LOCALES = {
    "train": [
        "en_US",
        "en_GB",
        "en_IE",
        "ga_IE",
        "es_ES",
        "es_MX",
        "fr_FR",
        "de_DE",
        "it_IT",
        "pt_BR",
        "pl_PL",
        "nl_NL",
        "vi_VN",
        "zh_CN",
        "ru_RU",
        "tr_TR",
        "hr_HR",
        "en_IN",
        "cs_CZ",
        "sv_SE",
        "hu_HU",
        "ro_RO",
        "yo_NG",
        "id_ID",
        "fi_FI",
        "da_DK",
    ],
    "heldout": [
        "en_US",
        "en_GB",
        "ga_IE",
        "es_ES",
        "es_MX",
        "es_AR",
        "fr_FR",
        "fr_CA",
        "de_DE",
        "de_AT",
        "it_IT",
        "pt_BR",
        "pt_PT",
        "pl_PL",
        "nl_NL",
        "nl_BE",
        "vi_VN",
        "zh_CN",
        "zh_TW",
        "ru_RU",
        "uk_UA",
        "tr_TR",
        "hr_HR",
        "sl_SI",
        "sk_SK",
        "lt_LT",
        "en_IN",
        "en_NG",
        "ja_JP",
        "no_NO",
        "et_EE",
    ],
}

DRUGS = [
    "metformin",
    "lisinopril",
    "atorvastatin",
    "amlodipine",
    "metoprolol",
    "omeprazole",
    "losartan",
    "gabapentin",
    "sertraline",
    "furosemide",
    "apixaban",
    "warfarin",
    "levothyroxine",
    "insulin",
    "glargine",
    "prednisone",
    "amoxicillin",
    "ceftriaxone",
    "vancomycin",
    "heparin",
    "Eliquis",
    "Xarelto",
    "Lasix",
    "Lipitor",
    "Zoloft",
    "Keppra",
    "Coumadin",
    "Augmentin",
    "Tylenol",
    "Advil",
    "Norco",
    "Dilaudid",
    "Ativan",
    "Haldol",
    "Seroquel",
    "Protonix",
    "Zofran",
    "Lantus",
    "Humalog",
    "Januvia",
    "Jardiance",
    "Ozempic",
    "Entresto",
    "Plavix",
    "Synthroid",
    "Flomax",
]
LABS = [
    "potassium {a}.{b} mmol/L",
    "sodium 13{b} mmol/L",
    "creatinine 1.{b} mg/dL",
    "hemoglobin 1{b}.{a} g/dL",
    "HbA1c {a}.{b}%",
    "troponin 0.0{b} ng/mL",
    "WBC {a}.{b} x10^9/L",
    "INR 2.{b}",
    "lactate {a}.{b} mmol/L",
]
EPONYMS = [
    "Parkinson's disease",
    "Crohn's disease",
    "Hodgkin lymphoma",
    "Graves' disease",
    "Down syndrome",
    "Foley catheter",
    "Apgar score",
    "Glasgow Coma Scale",
    "Barrett's esophagus",
    "Bell's palsy",
    "Wilson's disease",
    "Allen test",
    "Alzheimer's dementia",
    "Cushing's syndrome",
    "Addison's disease",
    "Guillain-Barre syndrome",
    "Hashimoto's thyroiditis",
    "Raynaud's phenomenon",
    "Sjogren's syndrome",
    "Babinski sign",
    "Murphy's sign",
    "Kernig sign",
    "Homans sign",
    "Swan-Ganz catheter",
    "Whipple procedure",
    "Nissen fundoplication",
    "Cheyne-Stokes respirations",
    "Kussmaul breathing",
    "Meniere's disease",
    "Tourette syndrome",
    "Huntington's disease",
    "Bell's palsy",
    "Lou Gehrig's disease",
    "Wernicke encephalopathy",
    "Korsakoff syndrome",
    "Epley maneuver",
    "Valsalva maneuver",
    "Trendelenburg position",
    "Brugada pattern",
    "Kaposi sarcoma",
    "Ewing sarcoma",
    "Wilms tumor",
    "Paget's disease",
    "Reiter syndrome",
    "Marfan syndrome",
]
_NON_LATIN_PLACES = frozenset(["ja_JP", "zh_CN", "zh_TW", "ru_RU", "uk_UA", "ko_KR", "el_GR"])
# capitalised words that are not names: services, departments, section headings, conditions in title case
SERVICES = [
    "Cardiology",
    "Internal Medicine",
    "Physical Therapy",
    "Occupational Therapy",
    "Emergency Department",
    "General Surgery",
    "Infectious Disease",
    "Palliative Care",
    "Social Work",
    "Case Management",
    "Oncology",
    "Nephrology",
    "Neurology",
    "Orthopedics",
    "Pharmacy",
    "Radiology",
    "Wound Care",
    "Speech Therapy",
    "Intensive Care Unit",
    "Primary Care",
    "Geriatrics",
    "Dermatology",
    "Endocrinology",
    "Pulmonology",
    "Contact Precautions",
    "Fall Precautions",
    "Patient Education",
    "Discharge Planning",
    "Nutrition Services",
    "COPD Exacerbation",
    "Heart Failure",
    "Acute Kidney Injury",
    "Sepsis Protocol",
    "Pain Management",
]
RELATIONS = [
    "sister",
    "brother",
    "son",
    "daughter",
    "wife",
    "husband",
    "mother",
    "father",
    "partner",
    "niece",
    "nephew",
    "aunt",
    "uncle",
    "grandson",
]
_UNITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@lru_cache(maxsize=64)
def _faker(locale: str) -> Any:
    from faker import Faker

    return Faker(locale)


class _Person:
    def __init__(self, rng: random.Random, locale: str, oov: bool) -> None:
        fk = _faker(locale)
        romanised = hasattr(fk, "first_romanized_name")
        first = fk.first_romanized_name() if romanised else fk.first_name()
        last = fk.last_romanized_name() if romanised else fk.last_name()
        middle = fk.first_romanized_name() if romanised else fk.first_name()
        self.first, self.last, self.middle = (translit(x) for x in (first, last, middle))
        if oov:  # a name no lexicon holds: the tagger must read context and shape
            self.first, self.last = _mutate(rng, self.first), _mutate(rng, self.last)


def _mutate(rng: random.Random, name: str) -> str:
    vowels = "aeiou"
    chars = list(name)
    idx = [i for i, c in enumerate(chars) if c.lower() in vowels and i > 0]
    if idx:
        i = rng.choice(idx)
        chars[i] = rng.choice([v for v in vowels if v != chars[i].lower()])
    return "".join(chars) + rng.choice(["", "", "ra", "ek", "ini", "sson", "ova", "ez", "o"])


def _initial(word: str) -> str:
    return word[0].upper() + "."


# name forms: a list of (text, is_name) pieces; titles and credentials are context, not the name
def _forms(p: _Person, role: str) -> dict[str, list[tuple[str, bool]]]:
    f, sn, m = p.first, p.last, p.middle
    title = "Dr." if role == "clinician" else "Mr." if len(sn) % 2 else "Ms."
    return {
        "full": [(f"{f} {sn}", True)],
        "middle": [(f"{f} {_initial(m)} {sn}", True)],
        "initial": [(f"{_initial(f)} {sn}", True)],
        "initials2": [(f"{_initial(f)}{_initial(m)} {sn}", True)],
        "last_first": [(f"{sn}, {f}", True)],
        "caps": [(f"{sn.upper()}, {f.upper()}", True)],
        "title": [(f"{title} ", False), (sn, True)],
        "title_full": [(f"{title} ", False), (f"{f} {sn}", True)],
        "possessive": [(sn, True), ("'s", False)],
        "given": [(f, True)],
        "lower": [(f"{f.lower()} {sn.lower()}", True)],
        "cred_brackets": [(f"{f} {_initial(sn)}", True), (" (RN)" if role == "clinician" else " (NP)", False)],
        "cred": [(f"{f} {sn}", True), (", " + random.Random(len(f)).choice(["MD", "RN", "DO", "NP", "PA-C"]), False)],
        "caps_full": [(f"{f.upper()} {sn.upper()}", True)],
    }


_ROLE_FORMS = {
    "patient": [
        "full",
        "full",
        "middle",
        "last_first",
        "caps",
        "title",
        "title_full",
        "possessive",
        "initial",
        "lower",
        "caps_full",
    ],
    "relative": ["full", "given", "given", "title_full", "lower", "initial"],
    "clinician": [
        "title",
        "title",
        "title_full",
        "cred",
        "cred_brackets",
        "initial",
        "initials2",
        "full",
        "last_first",
        "possessive",
    ],
}


class _Writer:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.phi: list[Phi] = []
        self.keep: list[str] = []

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def mark(self, s: str, kind: str, role: str = "") -> None:
        if s:
            self.phi.append(Phi(self.pos, self.pos + len(s), kind, role))
        self.text(s)


def _age_words(n: int) -> str:
    """90..109 in words: "ninety-eight", "one hundred and two"."""
    if n >= 100:
        return "one hundred" + (f" and {_UNITS[n - 101]}" if n > 100 else "")
    return "ninety" + (f"-{_UNITS[n - 91]}" if n > 90 else "")


class _Filler:
    """Fills template slots for one note: one patient, relatives and clinicians, consistent within the note."""

    def __init__(self, rng: random.Random, family: str) -> None:
        self.rng = rng
        locales = LOCALES[family]
        self.locale = rng.choice(locales)
        # places and numbers in Latin script: a note in English does not carry a Japanese or Cyrillic address
        self.fk = _faker(self.locale if self.locale not in _NON_LATIN_PLACES else "en_US")
        oov = 0.25
        self.people = {
            "P": _Person(rng, self.locale, rng.random() < oov),
            "R": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C2": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C3": _Person(rng, rng.choice(locales), rng.random() < oov),
        }
        self.lower = False

    def name(self, w: _Writer, slot: str, form: str | None = None) -> None:
        role = {"P": "patient", "R": "relative"}.get(slot, "clinician")
        p = self.people[slot]
        form = form or self.rng.choice(_ROLE_FORMS[role])
        if self.lower and form not in ("lower",):
            form = "lower" if form != "given" else "given"
        for piece, is_name in _forms(p, role)[form]:
            if self.lower:
                piece = piece.lower()
            if is_name:
                for i, tok in enumerate(re.split(r"(\s+|,\s*)", piece)):
                    if i % 2:
                        w.text(tok)
                    elif tok:
                        w.mark(tok, "NAME", role)
            else:
                w.text(piece)

    def fill(self, w: _Writer, slot: str) -> None:
        rng, fk = self.rng, self.fk
        if slot in ("P", "R", "C", "C2", "C3"):
            return self.name(w, slot)
        if slot in ("PG", "RG", "CG"):
            return self.name(w, slot[0], "given")
        if slot in ("PL", "CL"):
            return self.name(w, slot[0], rng.choice(["title", "possessive", "full"]))
        if slot == "SVC":
            return w.text(rng.choice(SERVICES))
        if slot == "REL":
            return w.text(rng.choice(RELATIONS))
        if slot == "DATE":
            d = fk.date_between("-3y", "today")
            fmt = rng.choice(["%m/%d/%Y", "%d.%m.%Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y", "%m/%d/%y", "%b %d"])
            return w.mark(d.strftime(fmt), "DATE")
        if slot == "SDATE":
            return w.mark(f"{rng.randint(1, 12)}/{rng.randint(1, 28)}", "DATE")
        if slot == "DOB":
            return w.mark(fk.date_of_birth(minimum_age=20, maximum_age=99).strftime("%m/%d/%Y"), "DATE")
        if slot == "AGE":  # over 89 is PHI (digits or words); 89 and under is kept
            n = rng.randint(90, 104)
            if rng.random() < 0.5:
                return w.mark(_age_words(n), "AGE") if rng.random() < 0.5 else w.mark(str(n), "AGE")
            return w.text(str(rng.randint(18, 89)))
        if slot == "PHONE":
            return w.mark(fk.phone_number(), "PHONE")
        if slot == "MRN":
            return w.mark(str(rng.randint(1_000_000, 9_999_999)), "MRN")
        if slot == "ADDR":
            street = fk.street_address()
            w.mark(street, "ADDRESS")
            w.text(", ")
            if rng.random() < 0.5:
                w.mark(fk.postcode(), "ZIP")
                w.text(" ")
                return w.mark(fk.city(), "ADDRESS")
            w.mark(fk.city(), "ADDRESS")
            w.text(" ")
            return w.mark(fk.postcode(), "ZIP")
        if slot == "CITY":
            return w.mark(fk.city(), "ADDRESS")
        if slot == "EMAIL":
            return w.mark(fk.free_email(), "EMAIL")
        if slot == "SSN":
            return w.mark(_faker("en_US").ssn(), "SSN")
        if slot == "LIC":
            w.text(rng.choice(["state license ", "medical license ", "licence no. ", "DEA "]))
            value = rng.choice(
                [
                    f"{rng.randint(10, 99)}.{rng.randint(100000, 999999)}",
                    f"G {rng.randint(10000, 99999)}",
                    f"{rng.choice('ABCMX')}{rng.randint(100000, 9999999)}",
                ]
            )
            return w.mark(value, "LICENSE")
        if slot == "IBAN":
            w.text("IBAN ")
            return w.mark(_faker(rng.choice(["de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL"])).iban(), "ACCOUNT")
        if slot == "PLATE":
            w.text(rng.choice(["reg. ", "plate ", "registration "]))
            letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(3))
            return w.mark(f"{letters}-{rng.randint(1000, 9999)}", "VEHICLE")
        if slot == "URL":
            return w.mark(fk.url() + "patient/" + str(rng.randint(1000, 99999)), "URL")
        # clinical phrases that must be kept
        if slot == "DRUG":
            return self.keep(w, rng.choice(DRUGS))
        if slot == "DOSE":
            return self.keep(w, f"{rng.choice(DRUGS)} {rng.choice([5, 10, 20, 25, 40, 50, 100, 250, 500])} mg")
        if slot == "LAB":
            return self.keep(w, rng.choice(LABS).format(a=rng.randint(2, 9), b=rng.randint(0, 9)))
        if slot == "EPO":
            return self.keep(w, rng.choice(EPONYMS))
        raise KeyError(slot)

    def keep(self, w: _Writer, phrase: str) -> None:
        w.keep.append(phrase)
        w.text(phrase)


_SLOT = re.compile(r"\{(\w+)\}")


def generate_notes(n: int, seed: int, family: str = "heldout") -> list[Note]:
    """``n`` notes of every kind, deterministic for a seed; ``family`` picks the template set (train/heldout)."""
    if family not in LOCALES:
        raise ValueError(f"family must be one of {sorted(LOCALES)}")
    rng = random.Random(seed)
    from faker import Faker

    Faker.seed(seed)
    notes = []
    kinds = sorted(TEMPLATES[family])
    for i in range(n):
        kind = kinds[i % len(kinds)]
        filler = _Filler(rng, family)
        filler.lower = kind == "message" and rng.random() < 0.5
        upper = kind in ("discharge", "signout", "nursing") and rng.random() < 0.15  # notes typed in capitals
        w = _Writer()
        lines = TEMPLATES[family][kind]
        chosen = [lines[0], *rng.sample(lines[1:], k=min(len(lines) - 1, rng.randint(7, 12)))]
        prose = _faker("en_US")  # ordinary English prose between the lines: words that are not names
        for _ in range(rng.randint(1, 4)):
            chosen.insert(rng.randint(1, len(chosen)), prose.sentence(nb_words=rng.randint(6, 16)))
        for line in chosen:
            if filler.lower:
                line = line.lower()
                line = _SLOT.sub(lambda m: "{" + m.group(1).upper() + "}", line)
            pos = 0
            for m in _SLOT.finditer(line):
                w.text(line[pos : m.start()])
                filler.fill(w, m.group(1))
                pos = m.end()
            w.text(line[pos:] + "\n")
        text = "".join(w.parts)
        if upper:  # same length: the labels stay where they are
            text = "".join(c.upper() if len(c.upper()) == 1 else c for c in text)
            w.keep = [k.upper() for k in w.keep]
        notes.append(Note(text, kind, w.phi, w.keep))
    return notes

"""Labelled evaluation notes: realistic synthetic clinical notes whose every identifier is labelled.

Each record carries the intake fields (``instruction``, ``response``, ``subject_id``) plus ``phi`` (every
identifier as it is written, with its placeholder type and, for names, the person's role) and ``keep`` (clinical
phrases a scrubber must leave intact). ``appliance data evaluate-scrub`` and ``bench/deid.py`` read them.

The notes are built from parts, so a label is always text that is present: a part is either plain text, a
labelled identifier or a phrase to keep. Names come from many Faker locales (accents, particles, romanised
Japanese and Chinese names); numbers are random digits; domains are ``example.*``. The templates here are written
for evaluation only and share nothing with the scrubber's own rules or training data. Output is a pure function
of ``(n, seed)`` for the pinned Faker version.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faker import Faker

__all__ = ["NOTE_TYPES", "generate_labelled_notes", "write_labelled_notes"]

NOTE_TYPES = ("discharge", "nursing", "referral", "messages", "signout")

# locales whose names are written in Latin letters; ja_JP and zh_CN give romanised names
_NAME_LOCALES = [
    "en_US",
    "en_GB",
    "en_IE",
    "ga_IE",
    "en_IN",
    "fr_FR",
    "de_DE",
    "de_AT",
    "es_ES",
    "es_MX",
    "it_IT",
    "pt_BR",
    "pt_PT",
    "nl_NL",
    "pl_PL",
    "cs_CZ",
    "sk_SK",
    "sv_SE",
    "fi_FI",
    "da_DK",
    "no_NO",
    "hu_HU",
    "ro_RO",
    "tr_TR",
    "vi_VN",
    "hr_HR",
    "sl_SI",
    "lv_LV",
    "yo_NG",
    "zu_ZA",
    "ja_JP",
    "zh_CN",
]
_ROMANISED = frozenset({"ja_JP", "zh_CN"})
_PARTICLES = ("van", "van der", "van den", "de", "da", "de la", "del", "di", "von", "dos", "le")
_GLUED = ("Mc", "Mac", "O'")
_RELATIONS = ("Sister", "Brother", "Daughter", "Son", "Wife", "Husband", "Mother", "Father", "Niece", "Grandson")
_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# clinical text a scrubber must keep: drugs (generic and brand), doses, lab values, eponyms, scores
_DRUGS = (
    "metformin 1000 mg",
    "Eliquis 5 mg",
    "Lasix 40 mg IV",
    "Keppra 750 mg",
    "Xarelto 20 mg",
    "Synthroid 88 mcg",
    "Lipitor 40 mg",
    "Zosyn 4.5 g",
    "vancomycin 1.25 g",
    "Coumadin 5 mg",
    "Norco 5/325",
    "Jardiance 10 mg",
    "Entresto 49/51 mg",
    "Humalog 6 units",
    "Lantus 22 units",
    "Zofran 4 mg",
    "Tylenol 650 mg",
    "Augmentin 875 mg",
    "prednisone 40 mg",
    "Sinemet 25/100",
)
_LABS = (
    "potassium 3.2 mmol/L",
    "sodium 131 mmol/L",
    "creatinine 1.8 mg/dL",
    "hemoglobin 8.4 g/dL",
    "HbA1c 8.1%",
    "troponin 0.09 ng/mL",
    "lactate 2.6 mmol/L",
    "INR 2.4",
    "WBC 14.2 x10^9/L",
    "BNP 1240 pg/mL",
    "TSH 6.8 mIU/L",
    "platelets 88 x10^9/L",
)
_EPONYMS = (
    "Parkinson's disease",
    "Barrett's esophagus",
    "Bell's palsy",
    "Crohn's disease",
    "Hodgkin lymphoma",
    "Graves' disease",
    "Down syndrome",
    "Wilson's disease",
    "Alzheimer's dementia",
    "Hashimoto's thyroiditis",
    "Raynaud's phenomenon",
    "Guillain-Barré syndrome",
    "Sjögren's syndrome",
    "Cushing's syndrome",
    "Addison's disease",
    "Meniere's disease",
    "Kaposi sarcoma",
    "Huntington's disease",
)
_EXAM_EPONYMS = (
    "Allen test",
    "Murphy's sign",
    "Babinski sign",
    "Homans sign",
    "Tinel's sign",
    "Romberg test",
    "Kernig's sign",
    "Apgar score",
    "Wells score",
)
_DEVICES_KEPT = ("Foley catheter", "Swan-Ganz catheter", "Hickman line", "Jackson-Pratt drain", "Yankauer suction")
_SCALES = ("Glasgow Coma Scale 14", "Glasgow Coma Scale 15", "Braden score 13", "Morse Fall Scale 45")

_UK_AREAS = ("SW", "NE", "M", "B", "LS", "EH")


def _inward(rng: random.Random) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    return rng.choice(letters) + rng.choice(letters)


# non-US addresses: (street form, postcode, city, country); the street part and the city are ADDRESS, the code ZIP
_ABROAD: tuple[tuple[str, Callable[[random.Random], str], str], ...] = (
    ("pl_PL", lambda r: f"{r.randint(10, 99)}-{r.randint(100, 999)}", "Poland"),
    (
        "nl_NL",
        lambda r: f"{r.randint(1000, 9999)} {r.choice(string.ascii_uppercase)}{r.choice('BCDFGHJKLMNPRSTVWXZ')}",
        "the Netherlands",
    ),
    ("fr_FR", lambda r: f"{r.randint(10, 95):02d}{r.randint(0, 999):03d}", "France"),
    ("de_DE", lambda r: f"{r.randint(10000, 99999)}", "Germany"),
    ("pt_PT", lambda r: f"{r.randint(1000, 9999)}-{r.randint(100, 999)}", "Portugal"),
    ("it_IT", lambda r: f"{r.randint(10, 98)}{r.randint(0, 999):03d}", "Italy"),
    (
        "en_GB",
        lambda r: f"{r.choice(_UK_AREAS)}{r.randint(1, 19)} {r.randint(1, 9)}{_inward(r)}",
        "the United Kingdom",
    ),
)
_US_STATES = (("Boston", "MA"), ("Worcester", "MA"), ("Providence", "RI"), ("Hartford", "CT"), ("Albany", "NY"))
_US_STREET_WORDS = ("Point", "Crossing", "Knoll", "Ridge", "Hollow", "Green", "Glen", "Harbor", "Landing", "Bend")


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _letters(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(n))


def _age_words(age: int) -> str:
    """An age of 90-109 in words, as a note writes it ("ninety-eight", "one hundred and two")."""
    if not 90 <= age <= 109:
        raise ValueError("only ages over 89 are written in words here")
    if age < 100:
        return "ninety" + (f"-{_ONES[age - 90]}" if age > 90 else "")
    return "one hundred" + (f" and {_ONES[age - 100]}" if age > 100 else "")


@cache
def _italian_cities() -> tuple[str, ...]:
    from faker.providers.address.it_IT import Provider

    return tuple(sorted(Provider.cities))


@dataclass
class _Person:
    given: str
    surname: str
    role: str
    middle: str = ""


@dataclass
class _Note:
    """A note built from parts, so every label points at text that is there."""

    parts: list[str] = field(default_factory=list)
    phi: list[dict[str, str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    def text(self, value: str) -> _Note:
        self.parts.append(value)
        return self

    def id(self, kind: str, value: str, role: str | None = None) -> _Note:
        self.parts.append(value)
        label = {"type": kind, "value": value}
        if role is not None:
            label["role"] = role
        if label not in self.phi:
            self.phi.append(label)
        return self

    def name(self, value: str, person: _Person) -> _Note:
        return self.id("NAME", value, person.role)

    def kept(self, value: str) -> _Note:
        self.parts.append(value)
        if value not in self.keep:
            self.keep.append(value)
        return self

    def render(self) -> str:
        return "".join(self.parts)


class _Maker:
    """Fake people and identifiers for one generation run (seeded)."""

    def __init__(self, rng: random.Random, fakers: dict[str, Faker]) -> None:
        self.r = rng
        self.f = fakers

    # --- people -------------------------------------------------------------------------------------------------
    def person(self, role: str) -> _Person:
        r = self.r
        locale = r.choice(_NAME_LOCALES)
        fk = self.f[locale]
        if locale in _ROMANISED:
            given, surname = fk.first_romanized_name(), fk.last_romanized_name()
        else:
            given, surname = fk.first_name(), fk.last_name()
        given, surname = given.split()[0], surname.replace("  ", " ")
        roll = r.random()
        if roll < 0.12:
            surname = f"{r.choice(_PARTICLES)} {surname.split()[-1]}"
        elif roll < 0.18:
            base = surname.split()[-1]
            surname = r.choice(_GLUED) + base[0].upper() + base[1:]
        middle = r.choice(string.ascii_uppercase) if r.random() < 0.25 else ""
        return _Person(given, surname, role, middle)

    def full(self, p: _Person) -> str:
        return f"{p.given} {p.middle}. {p.surname}" if p.middle else f"{p.given} {p.surname}"

    def caps_header(self, p: _Person) -> str:
        return f"{p.surname.upper()}, {p.given.upper()}"

    def last_first(self, p: _Person) -> str:
        return f"{p.surname}, {p.given}"

    def initial_surname(self, p: _Person) -> str:
        return f"{p.given[0]}. {p.surname}"

    def first_initial(self, p: _Person) -> str:
        return f"{p.given} {p.surname[0].upper()}."

    def initials(self, p: _Person) -> str:
        return f"{p.given[0]}.{p.surname[0].upper()}."

    # --- structured identifiers ---------------------------------------------------------------------------------
    def date(self) -> str:
        r = self.r
        y, m, d = r.randint(2019, 2026), r.randint(1, 12), r.randint(1, 28)
        months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        long = [
            "January",
            "February",
            "March",
            "April",
            "May",
            "June",
            "July",
            "August",
            "September",
            "October",
            "November",
            "December",
        ]
        return r.choice(
            [
                f"{m}/{d}/{y}",
                f"{m:02d}/{d:02d}/{y % 100:02d}",
                f"{y}-{m:02d}-{d:02d}",
                f"{d:02d}.{m:02d}.{y}",
                f"{long[m - 1]} {d}, {y}",
                f"{d} {months[m - 1]} {y}",
                f"{d}-{months[m - 1]}-{y}",
            ]
        )

    def short_date(self) -> str:
        return f"{self.r.randint(1, 12)}/{self.r.randint(1, 28)}"

    def dob(self) -> str:
        r = self.r
        y, m, d = r.randint(1920, 1990), r.randint(1, 12), r.randint(1, 28)
        return r.choice([f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d:02d}.{m:02d}.{y}"])

    def old_age(self) -> tuple[str, str]:
        """(the age as written, the text after it): over 89, in digits or words."""
        age = self.r.randint(90, 104)
        form = self.r.randrange(4)
        if form == 0:
            return _age_words(age).replace(" ", "-"), "-year-old"
        if form == 1:
            return _age_words(age).capitalize(), " years old"
        if form == 2:
            return str(age), "-year-old"
        return str(age), " yo"

    def phone(self) -> str:
        r = self.r

        def d(n: int) -> str:
            return _digits(r, n)

        return r.choice(
            [
                f"({r.randint(201, 989)}) {r.randint(201, 989)}-{d(4)}",
                f"{r.randint(201, 989)}-{r.randint(201, 989)}-{d(4)}",
                f"+1 {r.randint(201, 989)} {r.randint(201, 989)} {d(4)}",
                f"+33 {r.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",
                f"0{r.randint(1, 9)}.{d(2)}.{d(2)}.{d(2)}.{d(2)}",
                f"+44 20 {d(4)} {d(4)}",
                f"+49 30 {d(8)}",
                f"+48 {d(3)} {d(3)} {d(3)}",
                f"+31 6 {d(8)}",
                f"07{d(3)} {d(6)}",
                f"+351 {d(3)} {d(3)} {d(3)}",
            ]
        )

    def email(self, p: _Person) -> str:
        local = "".join(ch for ch in f"{p.given[0]}{p.surname}".lower() if ch.isascii() and ch.isalnum())
        domain = self.r.choice(["example.com", "example.org", "mail.example.net", "example.co.uk"])
        return f"{local or 'patient'}{self.r.randint(1, 99)}@{domain}"

    def ssn(self) -> str:
        return f"{self.r.randint(100, 899)}-{self.r.randint(10, 99)}-{_digits(self.r, 4)}"

    def mrn(self) -> str:
        return str(self.r.randint(1_000_000, 9_999_999))

    def member_id(self) -> str:
        r = self.r
        return r.choice(
            [
                f"{_letters(r, 3)}{_digits(r, 9)}",
                f"{r.randint(1, 9)}{_letters(r, 2)}{r.randint(0, 9)}-{_letters(r, 2)}{r.randint(0, 9)}-"
                f"{_letters(r, 2)}{_digits(r, 2)}",  # a Medicare beneficiary identifier's shape
                f"{_digits(r, 3)} {_digits(r, 3)} {_digits(r, 4)}",
            ]
        )

    def iban(self) -> str:
        locale = self.r.choice(["de_DE", "nl_NL", "fr_FR", "es_ES", "it_IT", "pl_PL", "en_GB"])
        raw = str(self.f[locale].iban())
        return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))

    def account(self) -> str:
        return _digits(self.r, self.r.randint(8, 10))

    def license(self) -> tuple[str, str]:
        """(label, value): licences with dots, letter prefixes, DEA and NPI forms."""
        r = self.r
        return r.choice(
            [
                ("state license", f"{_digits(r, 2)}.{_digits(r, 6)}"),
                ("medical license", f"{r.choice('ABCDGM')} {_digits(r, 5)}"),
                ("DEA", f"{r.choice('ABFM')}{_letters(r, 1)}{_digits(r, 7)}"),
                ("NPI", f"1{_digits(r, 9)}"),
                ("GMC no.", _digits(r, 7)),
                ("RN license", f"RN{_digits(r, 6)}"),
            ]
        )

    def plate(self) -> str:
        r = self.r
        return r.choice(
            [
                f"{_letters(r, 3)}-{_digits(r, 4)}",
                f"{r.randint(1, 9)}{_letters(r, 3)}{_digits(r, 3)}",
                f"{_letters(r, 2)}{_digits(r, 2)} {_letters(r, 3)}",
            ]
        )

    def vin(self) -> str:
        chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
        return "".join(self.r.choice(chars) for _ in range(17))

    def serial(self) -> str:
        r = self.r
        return r.choice([f"{_letters(r, 3)}{_digits(r, 6)}", f"{_digits(r, 2)}-{_digits(r, 4)}-{_digits(r, 4)}"])

    def url(self) -> str:
        host = self.r.choice(["portal.example-health.org", "mychart.example.com", "records.example.net"])
        return f"https://{host}/patient/{_digits(self.r, 6)}"

    def ip(self) -> str:
        r = self.r
        return f"{r.choice([10, 172, 192])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def us_street(self) -> str:
        r = self.r
        fk = self.f["en_US"]
        return f"{r.randint(10, 9999)} {fk.last_name()} {r.choice(_US_STREET_WORDS)}"

    def city(self, locale: str) -> str:
        """A city of ``locale``; Faker's it_IT list is built from a set (its order follows the string hash seed),
        so it is sorted first to keep the output a function of the seed across processes."""
        fk = self.f[locale]
        return str(fk.random_element(_italian_cities())) if locale == "it_IT" else str(fk.city())

    def address(self, note: _Note) -> None:
        """A home address: US (street outside the usual suffixes) or abroad, with its postcode labelled ZIP."""
        r = self.r
        if r.random() < 0.35:
            city, state = r.choice(_US_STATES)
            note.id("ADDRESS", self.us_street()).text(", ").id("ADDRESS", city).text(f", {state} ")
            note.id("ZIP", f"0{_digits(r, 4)}")
            return
        locale, postcode, country = r.choice(_ABROAD)
        fk = self.f[locale]
        street = str(fk.street_name()) if locale != "pl_PL" else f"ul. {fk.street_name().split()[-1]}"
        number = f"{r.randint(1, 120)}" + (f"/{r.randint(1, 60)}" if locale in ("pl_PL", "cs_CZ") else "")
        line = f"{street} {number}" if locale not in ("fr_FR", "en_GB") else f"{number} {street}"
        city = self.city(locale)
        code = postcode(r)
        note.id("ADDRESS", line).text(", ")
        if locale == "en_GB":
            note.id("ADDRESS", city).text(" ").id("ZIP", code)
        else:
            note.id("ZIP", code).text(" ").id("ADDRESS", city)
        note.text(f", {country}")

    # --- clinical text to keep ----------------------------------------------------------------------------------
    def drug(self) -> str:
        return self.r.choice(_DRUGS)

    def lab(self) -> str:
        return self.r.choice(_LABS)

    def eponym(self) -> str:
        return self.r.choice(_EPONYMS)


def _pick(r: random.Random, *options: str) -> str:
    return r.choice(options)


# --- note types ------------------------------------------------------------------------------------------------
def _discharge(m: _Maker, n: _Note) -> str:
    r = m.r
    pt, rel = m.person("patient"), m.person("relative")
    att, res = m.person("clinician"), m.person("clinician")
    n.text("DISCHARGE SUMMARY\nPATIENT: ").name(m.caps_header(pt), pt).text("    MRN: ").id("MRN", m.mrn())
    n.text("    DOB: ").id("DATE", m.dob()).text("\nADMITTED: ").id("DATE", m.date())
    n.text("    DISCHARGED: ").id("DATE", m.date()).text("\nATTENDING: Dr. ").name(att.surname, att).text("\n\n")
    if r.random() < 0.5:
        age, tail = m.old_age()
        n.text("HPI: ").name(m.full(pt), pt).text(" is a ").id("AGE", age).text(tail)
    else:
        n.text("HPI: ").name(m.full(pt), pt).text(" is a ").kept(f"{r.randint(40, 89)}-year-old").text(" woman")
    n.text(" with a history of ").kept(m.eponym()).text(" and ").kept(m.eponym())
    n.text(", admitted with a fall at home. ")
    n.text(_pick(r, "Labs on arrival: ", "Admission labs: ")).kept(m.lab()).text(", ").kept(m.lab()).text(". ")
    n.kept("Foley catheter").text(" placed in the ED, removed on day 2. ")
    n.text("Exam notable for positive ").kept(r.choice(_EXAM_EPONYMS)).text(".\n\n")
    n.text("HOSPITAL COURSE: Treated with ").kept(m.drug()).text(" and ").kept(m.drug()).text(". ")
    n.text(_pick(r, "Seen by ", "Discussed with ")).text("Dr. ").name(m.initial_surname(res), res)
    n.text(" (cardiology). ").name(pt.surname, pt).text("'s daughter ").name(m.full(rel), rel).text(" (").id(
        "PHONE", m.phone()
    ).text(") was updated.\n\n")
    n.text("DISCHARGE ADDRESS: ")
    m.address(n)
    n.text("\nSSN ").id("SSN", m.ssn()).text(" verified. Insurance member ID ").id("ID", m.member_id()).text(". ")
    n.text("Billing IBAN ").id("ACCOUNT", m.iban()).text(".\n")
    n.text("Pacemaker serial number ").id("DEVICE", m.serial()).text(" interrogated, normal function.\n")
    n.kept("Will follow up").text(" in clinic in 2 weeks.\n\nElectronically signed: ").name(m.full(att), att)
    n.text(", MD on ").id("DATE", m.date())
    return "Summarise this discharge summary for the patient's primary care physician."


def _nursing(m: _Maker, n: _Note) -> str:
    r = m.r
    pt, rel, rn, md = m.person("patient"), m.person("relative"), m.person("clinician"), m.person("clinician")
    n.text("NURSING NOTE 0700-1900\n").text("Pt: ").name(m.last_first(pt), pt).text(", bed ")
    n.text(f"{r.randint(1, 40)}{r.choice('AB')}. ")
    if r.random() < 0.6:
        age, tail = m.old_age()
        n.id("AGE", age).text(tail).text(" admitted for ")
    else:
        n.text("Admitted for ")
    n.kept(m.eponym()).text(" flare. ")
    n.kept(r.choice(_SCALES)).text(", oriented x2. ")
    n.text("Gave ").kept(m.drug()).text(" at 0900 per order. ").kept(m.lab()).text(". ")
    n.kept(r.choice(_DEVICES_KEPT)).text(" site clean and dry. ")
    relation = r.choice(_RELATIONS)
    n.text(f"{relation} ").name(rel.given, rel).text(" at bedside, asked about visiting hours; ")
    n.text(_pick(r, "Family: ", "Contact: ")).name(rel.given, rel).text(" ").id("PHONE", m.phone()).text(". ")
    n.text("Dr. ").name(md.surname, md).text(" notified of ").kept(m.lab()).text("; ")
    n.text("new order for ").kept(m.drug()).text(". ")
    n.text("Family brought glasses; ").name(pt.surname, pt).text("'s dentures in cup at bedside. ")
    n.text("Vehicle in visitor lot, reg. ").id("VEHICLE", m.plate()).text(".\n")
    n.name(m.first_initial(rn), rn).text(f" ({r.choice(['RN', 'LPN', 'RN, BSN'])})")
    return "List the nursing concerns and the actions taken in this note."


def _referral(m: _Maker, n: _Note) -> str:
    r = m.r
    pt, to, by, gp = m.person("patient"), m.person("clinician"), m.person("clinician"), m.person("clinician")
    n.id("DATE", m.date()).text("\n\nDear Dr. ").name(to.surname, to).text(",\n\n")
    title = r.choice(["Mr.", "Mrs.", "Ms."])
    n.text(f"Re: {title} ").name(m.full(pt), pt).text(", DOB ").id("DATE", m.dob()).text(", NHS number ")
    n.id("ID", f"{_digits(r, 3)} {_digits(r, 3)} {_digits(r, 4)}").text("\nAddress: ")
    m.address(n)
    n.text("\n\nThank you for seeing this ")
    if r.random() < 0.5:
        age, tail = m.old_age()
        n.id("AGE", age).text(tail)
    else:
        n.kept(f"{r.randint(30, 89)}-year-old")
    n.text(" with suspected ").kept(m.eponym()).text(". Past history includes ").kept(m.eponym()).text(". ")
    n.text("Current medication: ").kept(m.drug()).text(", ").kept(m.drug()).text(". ")
    n.text("Recent bloods: ").kept(m.lab()).text(". ")
    n.text("She was previously under ").name(m.initial_surname(gp), gp).text(" at our practice. ")
    n.text("She lives in ").id("ADDRESS", m.city(r.choice(["fr_FR", "de_DE", "pl_PL", "it_IT"])))
    n.text(" with her husband and can be reached on ").id("PHONE", m.phone()).text(" or ")
    n.id("EMAIL", m.email(pt)).text(". Her own portal: ").id("URL", m.url()).text(".\n\n")
    n.text("Yours sincerely,\n\n").name(m.full(by), by).text(", MD\n")
    lic_label, lic = m.license()
    n.text(f"{lic_label} ").id("LICENSE", lic).text("\nFax: ").id("FAX", m.phone())
    return "Draft a reply to this referral letter confirming the appointment."


def _messages(m: _Maker, n: _Note) -> str:
    r = m.r
    pt, rel, md, rn = m.person("patient"), m.person("relative"), m.person("clinician"), m.person("clinician")
    n.text("PATIENT PORTAL THREAD\n[patient] ")
    n.text("hi this is ").name(f"{rel.given} {rel.surname}".lower(), rel).text(", ")
    n.text(f"{r.choice(['my mom', 'my dad', 'my sister', 'my husband'])} ").name(pt.given.lower(), pt)
    n.text(" is still dizzy after starting the ").kept(m.drug().split()[0].lower()).text(". ")
    n.text("can dr ").name(md.surname.lower(), md).text(" call me back at ").id("PHONE", m.phone()).text(" thanks\n")
    n.text("[clinic] Hi ").name(rel.given, rel).text(", this is ").name(m.first_initial(rn), rn)
    n.text(" (RN) from Dr. ").name(md.surname, md).text("'s office. ")
    n.text("Please keep the appointment on ").id("DATE", m.short_date()).text(" and bring the ")
    n.kept("Glasgow Coma Scale").text(" sheet from the ED. Hold the ").kept(m.drug()).text(" until then.\n")
    n.text("[patient] ok will do. also her ").kept(m.eponym().lower()).text(" meds ran out, ")
    n.text("pharmacy on file is at ").id("ADDRESS", m.us_street()).text(". ")
    n.text("her login ip was ").id("IP", m.ip()).text(" if that matters\n")
    n.text("[clinic] Refill sent. - ").name(m.initials(md), md)
    return "Classify the urgency of this patient message thread as low, medium or high."


def _signout(m: _Maker, n: _Note) -> str:
    r = m.r
    day, night = m.person("clinician"), m.person("clinician")
    n.text("SIGN-OUT ").id("DATE", m.short_date()).text(" Team B  (day: Dr. ").name(day.surname, day)
    n.text(" / night: ").name(m.first_initial(night), night).text(" (NP))\n")
    for i in range(1, r.randint(3, 5)):
        pt = m.person("patient")
        n.text(f"{i}. ").name(m.caps_header(pt) if r.random() < 0.5 else m.last_first(pt), pt).text("  ")
        n.id("MRN", m.mrn()).text(f"  bed {r.randint(1, 30)}: ")
        n.kept(m.eponym()).text(", on ").kept(m.drug()).text(". ").kept(m.lab()).text(". ")
        if r.random() < 0.4:
            n.text("COMPARISON: ").id("DATE", m.short_date()).text(" CT unchanged. ")
        if r.random() < 0.3:
            age, tail = m.old_age()
            n.id("AGE", age).text(tail).text(", DNR. ")
        n.text(_pick(r, "f/u AM labs", "check K in AM", "wean O2", "PT eval"))
        n.text("\n")
    n.text("Covering pager ").id("PHONE", m.phone()).text(". Sepsis screen per ").kept("Wells score").text(".\n")
    n.text("- ").name(m.full(day), day).text(", MD")
    return "Extract the overnight to-do list from this sign-out."


_BUILDERS: dict[str, Callable[[_Maker, _Note], str]] = {
    "discharge": _discharge,
    "nursing": _nursing,
    "referral": _referral,
    "messages": _messages,
    "signout": _signout,
}


def _fakers(seed: int) -> dict[str, Faker]:
    from faker import Faker

    out: dict[str, Faker] = {}
    for i, locale in enumerate(sorted(set(_NAME_LOCALES) | {loc for loc, _, _ in _ABROAD} | {"es_ES"})):
        fk = Faker(locale)
        fk.seed_instance(seed * 1000 + i)
        out[locale] = fk
    return out


def generate_labelled_notes(n: int, seed: int = 13) -> list[dict[str, Any]]:
    """``n`` labelled notes cycling through the note types: intake fields plus ``phi`` and ``keep``.

    ``phi`` lists ``{"type", "value", "role"?}`` once per distinct value; each value and each ``keep`` phrase occurs
    verbatim in ``instruction`` (where the note is).
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    maker = _Maker(rng, _fakers(seed))
    records: list[dict[str, Any]] = []
    for i in range(n):
        kind = NOTE_TYPES[i % len(NOTE_TYPES)]
        note = _Note()
        task = _BUILDERS[kind](maker, note)
        records.append(
            {
                "instruction": f"{task}\n\n{note.render()}",
                "response": "See the note above; no identifiers are repeated here.",
                "subject_id": f"E{seed:04d}-{i:06d}",
                "metadata": {"note_type": kind},
                "phi": note.phi,
                "keep": note.keep,
            }
        )
    return records


def write_labelled_notes(path: Path, n: int, seed: int = 13) -> int:
    """Write ``generate_labelled_notes(n, seed)`` as JSONL to ``path``; returns the number of records."""
    records = generate_labelled_notes(n, seed)
    path.write_text("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records), encoding="utf-8")
    return len(records)

"""Fake people and identifiers for one labelled-note run (seeded), and the note they are written into."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from appliance.intake._labelled._vocab import (
    ABROAD,
    DRUGS,
    EPONYMS,
    GLUED,
    LABS,
    NAME_LOCALES,
    PARTICLES,
    ROMANISED,
    US_STATES,
    US_STREET_WORDS,
)

if TYPE_CHECKING:
    from faker import Faker

__all__ = ["Maker", "Note", "Person", "digits"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits(rng: random.Random, n: int) -> str:
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
class Person:
    given: str
    surname: str
    role: str
    middle: str = ""


@dataclass
class Note:
    """A note built from parts, so every label points at text that is there."""

    parts: list[str] = field(default_factory=list)
    phi: list[dict[str, str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    def text(self, value: str) -> Note:
        self.parts.append(value)
        return self

    def id(self, kind: str, value: str, role: str | None = None) -> Note:
        self.parts.append(value)
        label = {"type": kind, "value": value}
        if role is not None:
            label["role"] = role
        if label not in self.phi:
            self.phi.append(label)
        return self

    def name(self, value: str, person: Person) -> Note:
        return self.id("NAME", value, person.role)

    def kept(self, value: str) -> Note:
        self.parts.append(value)
        if value not in self.keep:
            self.keep.append(value)
        return self

    def render(self) -> str:
        return "".join(self.parts)


class Maker:
    """Fake people and identifiers for one generation run (seeded)."""

    def __init__(self, rng: random.Random, fakers: dict[str, Faker]) -> None:
        self.r = rng
        self.f = fakers

    # --- people -------------------------------------------------------------------------------------------------
    def person(self, role: str) -> Person:
        r = self.r
        locale = r.choice(NAME_LOCALES)
        fk = self.f[locale]
        if locale in ROMANISED:
            given, surname = fk.first_romanized_name(), fk.last_romanized_name()
        else:
            given, surname = fk.first_name(), fk.last_name()
        given, surname = given.split()[0], surname.replace("  ", " ")
        roll = r.random()
        if roll < 0.12:
            surname = f"{r.choice(PARTICLES)} {surname.split()[-1]}"
        elif roll < 0.18:
            base = surname.split()[-1]
            surname = r.choice(GLUED) + base[0].upper() + base[1:]
        middle = r.choice(string.ascii_uppercase) if r.random() < 0.25 else ""
        return Person(given, surname, role, middle)

    def full(self, p: Person) -> str:
        return f"{p.given} {p.middle}. {p.surname}" if p.middle else f"{p.given} {p.surname}"

    def caps_header(self, p: Person) -> str:
        return f"{p.surname.upper()}, {p.given.upper()}"

    def last_first(self, p: Person) -> str:
        return f"{p.surname}, {p.given}"

    def initial_surname(self, p: Person) -> str:
        return f"{p.given[0]}. {p.surname}"

    def first_initial(self, p: Person) -> str:
        return f"{p.given} {p.surname[0].upper()}."

    def initials(self, p: Person) -> str:
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
            return digits(r, n)

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

    def email(self, p: Person) -> str:
        local = "".join(ch for ch in f"{p.given[0]}{p.surname}".lower() if ch.isascii() and ch.isalnum())
        domain = self.r.choice(["example.com", "example.org", "mail.example.net", "example.co.uk"])
        return f"{local or 'patient'}{self.r.randint(1, 99)}@{domain}"

    def ssn(self) -> str:
        return f"{self.r.randint(100, 899)}-{self.r.randint(10, 99)}-{digits(self.r, 4)}"

    def mrn(self) -> str:
        return str(self.r.randint(1_000_000, 9_999_999))

    def member_id(self) -> str:
        r = self.r
        return r.choice(
            [
                f"{_letters(r, 3)}{digits(r, 9)}",
                f"{r.randint(1, 9)}{_letters(r, 2)}{r.randint(0, 9)}-{_letters(r, 2)}{r.randint(0, 9)}-"
                f"{_letters(r, 2)}{digits(r, 2)}",  # a Medicare beneficiary identifier's shape
                f"{digits(r, 3)} {digits(r, 3)} {digits(r, 4)}",
            ]
        )

    def iban(self) -> str:
        locale = self.r.choice(["de_DE", "nl_NL", "fr_FR", "es_ES", "it_IT", "pl_PL", "en_GB"])
        raw = str(self.f[locale].iban())
        return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))

    def account(self) -> str:
        return digits(self.r, self.r.randint(8, 10))

    def license(self) -> tuple[str, str]:
        """(label, value): licences with dots, letter prefixes, DEA and NPI forms."""
        r = self.r
        return r.choice(
            [
                ("state license", f"{digits(r, 2)}.{digits(r, 6)}"),
                ("medical license", f"{r.choice('ABCDGM')} {digits(r, 5)}"),
                ("DEA", f"{r.choice('ABFM')}{_letters(r, 1)}{digits(r, 7)}"),
                ("NPI", f"1{digits(r, 9)}"),
                ("GMC no.", digits(r, 7)),
                ("RN license", f"RN{digits(r, 6)}"),
            ]
        )

    def plate(self) -> str:
        r = self.r
        return r.choice(
            [
                f"{_letters(r, 3)}-{digits(r, 4)}",
                f"{r.randint(1, 9)}{_letters(r, 3)}{digits(r, 3)}",
                f"{_letters(r, 2)}{digits(r, 2)} {_letters(r, 3)}",
            ]
        )

    def vin(self) -> str:
        chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
        return "".join(self.r.choice(chars) for _ in range(17))

    def serial(self) -> str:
        r = self.r
        return r.choice([f"{_letters(r, 3)}{digits(r, 6)}", f"{digits(r, 2)}-{digits(r, 4)}-{digits(r, 4)}"])

    def url(self) -> str:
        host = self.r.choice(["portal.example-health.org", "mychart.example.com", "records.example.net"])
        return f"https://{host}/patient/{digits(self.r, 6)}"

    def ip(self) -> str:
        r = self.r
        return f"{r.choice([10, 172, 192])}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"

    def us_street(self) -> str:
        r = self.r
        fk = self.f["en_US"]
        return f"{r.randint(10, 9999)} {fk.last_name()} {r.choice(US_STREET_WORDS)}"

    def city(self, locale: str) -> str:
        """A city of ``locale``; Faker's it_IT list is built from a set (its order follows the string hash seed),
        so it is sorted first to keep the output a function of the seed across processes."""
        fk = self.f[locale]
        return str(fk.random_element(_italian_cities())) if locale == "it_IT" else str(fk.city())

    def address(self, note: Note) -> None:
        """A home address: US (street outside the usual suffixes) or abroad, with its postcode labelled ZIP."""
        r = self.r
        if r.random() < 0.35:
            city, state = r.choice(US_STATES)
            note.id("ADDRESS", self.us_street()).text(", ").id("ADDRESS", city).text(f", {state} ")
            note.id("ZIP", f"0{digits(r, 4)}")
            return
        locale, postcode, country = r.choice(ABROAD)
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
        return self.r.choice(DRUGS)

    def lab(self) -> str:
        return self.r.choice(LABS)

    def eponym(self) -> str:
        return self.r.choice(EPONYMS)

"""Fills template slots: Faker people in every name form, places, numbers and clinical phrases, labelled as written."""

from __future__ import annotations

import random
import re
from functools import lru_cache
from typing import Any

from appliance.intake._tagger._labels import Writer
from appliance.intake._tagger._vocab import (
    DRUGS,
    EPONYMS,
    LABS,
    LOCALES,
    NON_LATIN_PLACES,
    RELATIONS,
    SERVICES,
    translit,
)

__all__ = ["Filler", "faker_for"]

_UNITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@lru_cache(maxsize=64)
def faker_for(locale: str) -> Any:
    from faker import Faker

    fk = Faker(locale)
    for provider in fk.providers:  # it_IT builds its city list from a set: its order follows PYTHONHASHSEED
        if locale == "it_IT" and isinstance(getattr(provider, "cities", None), list):
            provider.cities = sorted(provider.cities)
    return fk


class _Person:
    def __init__(self, rng: random.Random, locale: str, oov: bool) -> None:
        fk = faker_for(locale)
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


def _age_words(n: int) -> str:
    """90..109 in words: "ninety-eight", "one hundred and two"."""
    if n >= 100:
        return "one hundred" + (f" and {_UNITS[n - 101]}" if n > 100 else "")
    return "ninety" + (f"-{_UNITS[n - 91]}" if n > 90 else "")


class Filler:
    """Fills template slots for one note: one patient, relatives and clinicians, consistent within the note."""

    def __init__(self, rng: random.Random, family: str) -> None:
        self.rng = rng
        locales = LOCALES[family]
        self.locale = rng.choice(locales)
        # places and numbers in Latin script: a note in English does not carry a Japanese or Cyrillic address
        self.fk = faker_for(self.locale if self.locale not in NON_LATIN_PLACES else "en_US")
        oov = 0.25
        self.people = {
            "P": _Person(rng, self.locale, rng.random() < oov),
            "R": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C2": _Person(rng, rng.choice(locales), rng.random() < oov),
            "C3": _Person(rng, rng.choice(locales), rng.random() < oov),
        }
        self.lower = False

    def name(self, w: Writer, slot: str, form: str | None = None) -> None:
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

    def fill(self, w: Writer, slot: str) -> None:
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
            return w.mark(faker_for("en_US").ssn(), "SSN")
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
            return w.mark(
                faker_for(rng.choice(["de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT", "pl_PL"])).iban(), "ACCOUNT"
            )
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

    def keep(self, w: Writer, phrase: str) -> None:
        w.keep.append(phrase)
        w.text(phrase)

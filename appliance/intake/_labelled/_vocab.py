"""Word lists of the labelled-note generator: name locales and name forms, clinical phrases a scrubber must keep,
and the shapes of addresses at home and abroad."""

from __future__ import annotations

import random
import string
from collections.abc import Callable

__all__ = [
    "ABROAD",
    "DEVICES_KEPT",
    "DRUGS",
    "EPONYMS",
    "EXAM_EPONYMS",
    "GLUED",
    "LABS",
    "NAME_LOCALES",
    "PARTICLES",
    "RELATIONS",
    "ROMANISED",
    "SCALES",
    "US_STATES",
    "US_STREET_WORDS",
]

# locales whose names are written in Latin letters; ja_JP and zh_CN give romanised names
NAME_LOCALES = [
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
ROMANISED = frozenset({"ja_JP", "zh_CN"})
PARTICLES = ("van", "van der", "van den", "de", "da", "de la", "del", "di", "von", "dos", "le")
GLUED = ("Mc", "Mac", "O'")
RELATIONS = ("Sister", "Brother", "Daughter", "Son", "Wife", "Husband", "Mother", "Father", "Niece", "Grandson")


# clinical text a scrubber must keep: drugs (generic and brand), doses, lab values, eponyms, scores
DRUGS = (
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
LABS = (
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
EPONYMS = (
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
EXAM_EPONYMS = (
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
DEVICES_KEPT = ("Foley catheter", "Swan-Ganz catheter", "Hickman line", "Jackson-Pratt drain", "Yankauer suction")
SCALES = ("Glasgow Coma Scale 14", "Glasgow Coma Scale 15", "Braden score 13", "Morse Fall Scale 45")

_UK_AREAS = ("SW", "NE", "M", "B", "LS", "EH")


def _inward(rng: random.Random) -> str:
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    return rng.choice(letters) + rng.choice(letters)


# non-US addresses: (street form, postcode, city, country); the street part and the city are ADDRESS, the code ZIP
ABROAD: tuple[tuple[str, Callable[[random.Random], str], str], ...] = (
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
US_STATES = (("Boston", "MA"), ("Worcester", "MA"), ("Providence", "RI"), ("Hartford", "CT"), ("Albany", "NY"))
US_STREET_WORDS = ("Point", "Crossing", "Knoll", "Ridge", "Hollow", "Green", "Glen", "Harbor", "Landing", "Bend")

"""Synthetic clinical records with fake PHI (no real patients), and labelled cases for measuring scrub recall.

Every identifier here is invented: names are drawn from common census names and combined at random, numbers are
random digits, phone numbers use the 555-01xx fiction range, domains are ``example.*``. Generation is seeded and
deterministic.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabeledCase", "generate_records", "labeled_cases", "write_synthetic"]


def _w(text: str) -> list[str]:
    return text.split()


FIRST = _w(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan Joseph "
    "Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Donald Sandra Steven Ashley Paul "
    "Kimberly Andrew Emily Joshua Donna Kenneth Michelle Kevin Carol Brian Amanda George Melissa Timothy Deborah "
    "Maria Jose Luis Carlos Ana Rosa Juan Miguel Keisha Tyrone Latoya Andre Mei Wei Priya Ravi Fatima Omar Aisha "
    "Hiroshi Yuki Olga Ivan Ingrid Lars Siobhan Declan Chiara Marco"
)
LAST = _w(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez Wilson "
    "Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson Harris Sanchez Clark Ramirez Lewis Robinson "
    "Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Adams Nelson Baker Campbell Mitchell Carter "
    "Roberts Chen Patel Kim Okafor Kowalski Novak Schmidt Murphy O'Brien Rossi Tanaka Ivanova Haddad Washington"
)
# invented names outside the census lexicon: only context rules can find them (measured separately)
RARE_FIRST = _w("Zyntharia Quillon Bexley Oriwen Tavish Marisole Kaelith Dorvan Ysolde Femke")
RARE_LAST = _w("Quellbrook Vantaggio Druskel Ashgrove-Pym Oyelaran Thistlewaite Zarnecki Mbeki-Lund Carrow Ferreira")
STREETS = _w("Main Oak Maple Cedar Elm Pine Washington Lake Hill Park Sunset Highland River Willow Chestnut")
SUFFIXES = _w("St Street Ave Avenue Rd Road Blvd Dr Drive Ln Lane Ct Way Place Terrace")
CITIES = [
    ("Springfield", "IL"),
    ("Boston", "MA"),
    ("Columbus", "OH"),
    ("Austin", "TX"),
    ("Portland", "OR"),
    ("Fairview", "TN"),
    ("Madison", "WI"),
    ("Salem", "NH"),
    ("Riverside", "CA"),
    ("Greenville", "SC"),
]
MONTHS = _w("January February March April May June July August September October November December")
CONDITIONS = [
    "type 2 diabetes",
    "hypertension",
    "community-acquired pneumonia",
    "COPD exacerbation",
    "atrial fibrillation",
    "congestive heart failure",
    "urinary tract infection",
    "asthma",
    "chronic kidney disease stage 3",
    "migraine",
    "cellulitis of the left leg",
    "major depressive disorder",
    "osteoarthritis of the right knee",
    "iron-deficiency anaemia",
    "acute appendicitis",
]
MEDS = [
    "metformin 500 mg twice daily",
    "lisinopril 10 mg daily",
    "amoxicillin 875 mg every 12 hours",
    "apixaban 5 mg twice daily",
    "furosemide 40 mg daily",
    "albuterol inhaler as needed",
    "atorvastatin 20 mg nightly",
    "sertraline 50 mg daily",
    "ferrous sulfate 325 mg daily",
    "cephalexin 500 mg four times daily",
]
TASKS = [
    "Summarise this discharge note for the primary care physician.",
    "Write patient-friendly discharge instructions from this note.",
    "List the active problems and medications in this note.",
    "Draft a referral letter based on this clinical note.",
    "Extract the follow-up plan from this note.",
    "Classify the urgency of this triage note as low, medium or high.",
]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _upper_alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))


class _Fake:
    """Generators of fake identifiers, one method per placeholder type."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def name(self) -> str:
        return f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}"

    def rare_name(self) -> str:
        return f"{self.rng.choice(RARE_FIRST)} {self.rng.choice(RARE_LAST)}"

    def date(self) -> str:
        r = self.rng
        y, m, d = r.randint(1930, 2025), r.randint(1, 12), r.randint(1, 28)
        month = MONTHS[m - 1]
        formats = [
            f"{y:04d}-{m:02d}-{d:02d}",
            f"{m:02d}/{d:02d}/{y:04d}",
            f"{m}/{d}/{y % 100:02d}",
            f"{month} {d}, {y}",
            f"{month[:3]} {d} {y}",
            f"{d} {month} {y}",
            f"{d}th of {month}, {y}",
            f"{d:02d}.{m:02d}.{y:04d}",
            f"{d:02d}-{month[:3]}-{y}",
            f"{month} {y}",
        ]
        return r.choice(formats)

    def phone(self) -> str:
        a, b = self.rng.randint(201, 989), f"01{self.rng.randint(0, 99):02d}"
        p = f"555-{b}"
        return self.rng.choice(
            [f"({a}) {p}", f"{a}-{p}", f"{a}.555.{b}", f"+1 {a} 555 {b}", f"1-{a}-{p}", f"{a} 555 {b}"]
        )

    def email(self) -> str:
        first, last = self.rng.choice(FIRST).lower(), self.rng.choice(LAST).lower().replace("'", "")
        return f"{first}.{last}{self.rng.randint(1, 99)}@example.{self.rng.choice(['org', 'com', 'net'])}"

    def ssn(self) -> str:
        return f"{self.rng.randint(100, 665):03d}-{self.rng.randint(1, 99):02d}-{self.rng.randint(1, 9999):04d}"

    def mrn(self) -> str:
        return self.rng.choice([_digits(self.rng, 7), _digits(self.rng, 8), f"MR{_digits(self.rng, 6)}"])

    def address(self) -> str:
        r = self.rng
        street = f"{r.randint(1, 9999)} {r.choice(STREETS)} {r.choice(SUFFIXES)}"
        if r.random() < 0.4:
            street += f", {r.choice(['Apt', 'Suite', 'Unit'])} {r.randint(1, 40)}{r.choice(['', 'A', 'B'])}"
        return street

    def city(self) -> tuple[str, str]:
        return self.rng.choice(CITIES)

    def zip(self) -> str:
        return _digits(self.rng, 5) if self.rng.random() < 0.7 else f"{_digits(self.rng, 5)}-{_digits(self.rng, 4)}"

    def url(self) -> str:
        return self.rng.choice(
            [
                f"https://portal.example.org/patients/{_digits(self.rng, 6)}",
                f"http://www.example.com/chart?id={_digits(self.rng, 5)}",
                f"www.example.net/records/{_digits(self.rng, 4)}",
            ]
        )

    def ip(self) -> str:
        if self.rng.random() < 0.8:
            return ".".join(str(self.rng.randint(1, 254)) for _ in range(4))
        return f"2001:db8:{self.rng.randint(1, 0xFFFF):x}::{self.rng.randint(1, 0xFFFF):x}"

    def account(self) -> str:
        return self.rng.choice([_digits(self.rng, 8), f"{_digits(self.rng, 4)}-{_digits(self.rng, 6)}"])

    def license(self) -> str:
        return self.rng.choice([f"D{_digits(self.rng, 7)}", f"MD{_digits(self.rng, 6)}", _digits(self.rng, 10)])

    def device(self) -> str:
        return self.rng.choice([f"SN{_digits(self.rng, 8)}", f"{_upper_alnum(self.rng, 3)}-{_digits(self.rng, 6)}"])

    def vin(self) -> str:
        chars = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
        return _digits(self.rng, 1) + "".join(self.rng.choice(chars) for _ in range(15)) + _digits(self.rng, 1)

    def plate(self) -> str:
        letters = "".join(self.rng.choice(string.ascii_uppercase) for _ in range(3))
        return f"{self.rng.randint(1, 9)}{letters}{_digits(self.rng, 3)}"

    def member_id(self) -> str:
        return f"{''.join(self.rng.choice(string.ascii_uppercase) for _ in range(3))}{_digits(self.rng, 9)}"

    def old_age(self) -> str:
        return str(self.rng.randint(90, 104))


@dataclass(frozen=True)
class LabeledCase:
    """One sentence holding one known identifier of one placeholder type."""

    kind: str
    value: str
    text: str
    in_lexicon: bool = True  # for NAME: whether the name's parts are in the census lexicon


def _templates(f: _Fake) -> dict[str, list[Callable[[str], str]]]:
    return {
        "NAME": [
            lambda v: f"Patient {v} was admitted with chest pain.",
            lambda v: f"Seen today with Dr. {v.split()[-1]} for follow-up.",
            lambda v: f"Mrs. {v} reports improved mobility.",
            lambda v: f"Her son, {v}, will provide transport home.",
            lambda v: f"Electronically signed by {v}, MD on the ward.",
            lambda v: f"Name: {v}\nReason for visit: cough.",
            lambda v: f"{v} presented to clinic with a rash.",
            lambda v: f"Discussed the plan with {v} and her husband.",
            lambda v: f"{v.split()[-1]}, {v.split()[0]} is a 54-year-old with asthma.",
            lambda v: f"Emergency contact: {v} (sister).",
        ],
        "DATE": [
            lambda v: f"Admitted on {v} with pneumonia.",
            lambda v: f"DOB: {v}",
            lambda v: f"Last colonoscopy {v}, normal.",
            lambda v: f"Follow-up scheduled for {v} in clinic.",
        ],
        "PHONE": [
            lambda v: f"Call the patient at {v} with results.",
            lambda v: f"Tel: {v}",
            lambda v: f"Daughter's cell {v} is the best contact.",
        ],
        "FAX": [lambda v: f"Fax: {v}", lambda v: f"Please fax records to {v} today.", lambda v: f"F: {v}"],
        "EMAIL": [lambda v: f"Email results to {v}.", lambda v: f"Contact: {v}"],
        "SSN": [lambda v: f"SSN {v} on file.", lambda v: f"Social security number: {v}", lambda v: f"ID check {v} ok."],
        "MRN": [
            lambda v: f"MRN: {v}",
            lambda v: f"Medical record number {v} reviewed.",
            lambda v: f"MRN#{v} admitted to 4 West.",
            lambda v: f"Chart no. {v} updated.",
        ],
        "ADDRESS": [
            lambda v: f"Lives at {v} with her husband.",
            lambda v: f"Home address: {v}.",
            lambda v: f"Discharged to {v}.",
        ],
        "ZIP": [
            lambda v: f"{f.city()[0]}, {f.city()[1]} {v}",
            lambda v: f"ZIP code {v} is outside the service area.",
            lambda v: f"Zip: {v}",
        ],
        "URL": [lambda v: f"Results posted at {v} for review.", lambda v: f"See {v}"],
        "IP": [lambda v: f"Portal login from IP {v} flagged.", lambda v: f"Device at {v} sent the reading."],
        "ACCOUNT": [
            lambda v: f"Account number {v} billed.",
            lambda v: f"Acct # {v}",
            lambda v: f"Billing account: {v} is overdue.",
        ],
        "LICENSE": [
            lambda v: f"Driver's license {v} verified at registration.",
            lambda v: f"License no. {v}",
            lambda v: f"NPI {v} on the prescription.",
        ],
        "DEVICE": [
            lambda v: f"Pacemaker serial number {v} interrogated.",
            lambda v: f"Insulin pump S/N {v} replaced.",
            lambda v: f"Device ID: {v}",
        ],
        "VEHICLE": [lambda v: f"VIN {v} involved in the collision.", lambda v: f"License plate {v} noted by EMS."],
        "ID": [
            lambda v: f"Member ID {v} on the insurance card.",
            lambda v: f"Health plan beneficiary number: {v}",
            lambda v: f"Policy number {v} active.",
        ],
        "AGE": [
            lambda v: f"A {v}-year-old woman with dementia.",
            lambda v: f"Patient is {v} years old.",
            lambda v: f"Aged {v}, lives alone.",
            lambda v: f"{v} y/o male with fall.",
        ],
    }


def labeled_cases(seed: int = 7, per_type: int = 40) -> list[LabeledCase]:
    """``per_type`` labelled sentences per placeholder type (names: census names, then invented ones)."""
    rng = random.Random(seed)
    f = _Fake(rng)
    values: dict[str, Callable[[], str]] = {
        "NAME": f.name,
        "DATE": f.date,
        "PHONE": f.phone,
        "FAX": f.phone,
        "EMAIL": f.email,
        "SSN": f.ssn,
        "MRN": f.mrn,
        "ADDRESS": f.address,
        "ZIP": f.zip,
        "URL": f.url,
        "IP": f.ip,
        "ACCOUNT": f.account,
        "LICENSE": f.license,
        "DEVICE": f.device,
        "VEHICLE": lambda: f.vin() if rng.random() < 0.5 else f.plate(),
        "ID": f.member_id,
        "AGE": f.old_age,
    }
    cases: list[LabeledCase] = []
    templates = _templates(f)
    for kind, make in values.items():
        for i in range(per_type):
            value = make()
            template = templates[kind][i % len(templates[kind])]
            cases.append(LabeledCase(kind, value, template(value)))
    for i in range(per_type):
        value = f.rare_name()
        template = templates["NAME"][i % len(templates["NAME"])]
        cases.append(LabeledCase("NAME", value, template(value), in_lexicon=False))
    return cases


def _note(rng: random.Random, f: _Fake, patient: str, age: str, mrn: str) -> str:
    condition, med = rng.choice(CONDITIONS), rng.choice(MEDS)
    city, state = f.city()
    parts = [
        f"Patient: {patient}. MRN: {mrn}. DOB: {f.date()}.",
        f"{age}-year-old admitted on {f.date()} with {condition}.",
        f"Treated and discharged on {f.date()} on {med}.",
    ]
    extras = [
        lambda: f"Lives at {f.address()}, {city}, {state} {f.zip()}.",
        lambda: f"Contact phone {f.phone()}; fax {f.phone()}.",
        lambda: f"Email {f.email()} for the portal invite.",
        lambda: f"SSN {f.ssn()} verified by registration.",
        lambda: f"Insurance member ID {f.member_id()}. Account number {f.account()}.",
        lambda: f"Seen by Dr. {rng.choice(LAST)}; referring physician {f.name()}, MD.",
        lambda: f"Pacemaker serial number {f.device()} checked.",
        lambda: f"Arrived by car, license plate {f.plate()}.",
        lambda: f"Portal: {f.url()} (login from {f.ip()}).",
        lambda: f"Driver's license {f.license()} scanned at check-in.",
        lambda: f"Daughter {f.name()} is the emergency contact.",
    ]
    for extra in rng.sample(extras, k=rng.randint(2, 4)):
        parts.append(extra())
    parts.append(f"Follow up with primary care in {rng.randint(1, 6)} weeks.")
    return " ".join(parts)


def _answer(rng: random.Random, task: str, condition_hint: str) -> str:
    plans = [
        "Continue current medications, repeat labs in two weeks, return if symptoms worsen.",
        "Outpatient follow-up with cardiology; daily weights; low-salt diet.",
        "Complete the antibiotic course; hydrate; recheck at the clinic if fever persists.",
        "Titrate the dose as tolerated; monitor blood pressure at home twice daily.",
    ]
    if "urgency" in task:
        return rng.choice(["Urgency: low.", "Urgency: medium.", "Urgency: high - same-day review."])
    return f"The patient was treated for {condition_hint}. {rng.choice(plans)}"


def generate_records(n: int = 600, seed: int = 2024) -> list[dict[str, object]]:
    """``n`` synthetic records: shared subjects, fake PHI of every type, ``n // 40`` exact and as many near
    duplicates."""
    rng = random.Random(seed)
    f = _Fake(rng)
    records: list[dict[str, object]] = []
    subject_no = 0
    dup_count = max(1, n // 40)
    base = n - 2 * dup_count
    while len(records) < base:
        subject_no += 1
        patient, mrn = f.name(), f.mrn()
        age = f.old_age() if rng.random() < 0.15 else str(rng.randint(18, 89))
        subject_id: str | None = f"P{100000 + subject_no}" if rng.random() > 0.1 else None
        for _ in range(rng.randint(1, 6) if subject_id else 1):
            task = rng.choice(TASKS)
            note = _note(rng, f, patient, age, mrn)
            condition = next((c for c in CONDITIONS if c in note), "their condition")
            rec: dict[str, object] = {"instruction": f"{task}\n\n{note}", "response": _answer(rng, task, condition)}
            if subject_id is not None:
                rec["subject_id"] = subject_id
            if rng.random() < 0.3:
                rec["metadata"] = {"source": "synthetic", "ward": rng.choice(["4 West", "ICU", "ED"]), "mrn": mrn}
            records.append(rec)
    records = records[:base]
    for src in rng.sample(records[: base // 2], k=dup_count):  # exact duplicates (after normalisation)
        dup = dict(src)
        dup["instruction"] = "  " + str(src["instruction"]).upper() + " "
        records.insert(rng.randint(0, len(records)), dup)
    for src in rng.sample(records[base // 2 :], k=dup_count):  # near duplicates: one extra clause
        near = dict(src)
        near["response"] = str(src["response"]) + " Reviewed."
        records.insert(rng.randint(0, len(records)), near)
    return records


def write_synthetic(path: Path, n: int = 600, seed: int = 2024) -> int:
    """Write the synthetic dataset as JSONL (atomically); returns the number of records."""
    records = generate_records(n, seed)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return len(records)

"""Synthetic clinical records with fake PHI (no real patients); the labelled recall cases are in ``_recall_cases``.

Every identifier here is invented (``_fake``): names are drawn from common census names and combined at random,
numbers are random digits, phone numbers use the 555-01xx fiction range, domains are ``example.*``. Generation is
seeded and deterministic.

The records are a *learnable* task: each instruction is one task line, a blank line and one note, and each
response follows from the note by these rules (:func:`answer`), so a model can learn them and exact match means
something. A note states an age, a primary diagnosis, vital signs, a discharge medication and a follow-up interval.

==============  ========================================================================  ======================
task            rule                                                                      example answer
==============  ========================================================================  ======================
urgency         ``high`` if SpO2 < 90 %, systolic BP < 90 mmHg or HR > 130 bpm; else      ``medium``
                ``medium`` if SpO2 <= 93 %, HR > 100, temperature >= 38.0 C, systolic
                BP >= 180, or the diagnosis is acute (pneumonia, COPD exacerbation,
                heart failure, cellulitis, appendicitis); else ``low``
icd10           the ICD-10 chapter (code range) of the diagnosis, table ``CONDITIONS``    ``J00-J99``
drug_class      the class of the discharge medication, table ``MEDS``                     ``ACE inhibitor``
follow_up       the interval the note's last sentence states                              ``in 3 weeks``
summary         free text: age, diagnosis, urgency, medication and class, follow-up      (one sentence)
instructions    free text: diagnosis, drug, follow-up, when to come back                  (three sentences)
==============  ========================================================================  ======================

The first four are short answers (about 80 % of the records); the free-text tasks are scored by loss. The task
line says which task a record is (``TASKS``). Scrubbing keeps every fact a rule reads (vital signs, diagnosis,
drug, interval); an age over 89 becomes ``[AGE]`` in the note and the summary alike.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from appliance.intake._fake import FIRST, LAST, Fake

__all__ = [
    "CONDITIONS",
    "FIRST",
    "LAST",
    "MEDS",
    "SHORT_TASKS",
    "TASKS",
    "Case",
    "Vitals",
    "answer",
    "generate_records",
    "urgency",
    "write_synthetic",
]

# The task's knowledge tables: each condition's ICD-10 chapter (code range) and whether it is acute; each
# medication's drug class. The rules that turn a note into its answers are in the module docstring.
CONDITIONS: dict[str, tuple[str, bool]] = {
    "type 2 diabetes": ("E00-E89", False),
    "hypertension": ("I00-I99", False),
    "community-acquired pneumonia": ("J00-J99", True),
    "COPD exacerbation": ("J00-J99", True),
    "atrial fibrillation": ("I00-I99", False),
    "congestive heart failure": ("I00-I99", True),
    "urinary tract infection": ("N00-N99", False),
    "asthma": ("J00-J99", False),
    "chronic kidney disease stage 3": ("N00-N99", False),
    "migraine": ("G00-G99", False),
    "cellulitis of the left leg": ("L00-L99", True),
    "major depressive disorder": ("F01-F99", False),
    "osteoarthritis of the right knee": ("M00-M99", False),
    "iron-deficiency anaemia": ("D50-D89", False),
    "acute appendicitis": ("K00-K95", True),
}
MEDS: dict[str, str] = {
    "metformin 500 mg twice daily": "biguanide",
    "lisinopril 10 mg daily": "ACE inhibitor",
    "amoxicillin 875 mg every 12 hours": "penicillin antibiotic",
    "apixaban 5 mg twice daily": "factor Xa inhibitor",
    "furosemide 40 mg daily": "loop diuretic",
    "albuterol inhaler as needed": "beta-2 agonist",
    "atorvastatin 20 mg nightly": "statin",
    "sertraline 50 mg daily": "SSRI",
    "ferrous sulfate 325 mg daily": "iron supplement",
    "cephalexin 500 mg four times daily": "cephalosporin antibiotic",
}
# task name -> (instruction, weight): four short answers exact match can score, two free-text tasks
TASKS: dict[str, tuple[str, float]] = {
    "urgency": ("Triage: classify the urgency of this note as low, medium or high.", 0.3),
    "icd10": ("Coding: give the ICD-10 chapter (code range) of the primary diagnosis.", 0.2),
    "drug_class": ("Pharmacy: name the drug class of the discharge medication.", 0.2),
    "follow_up": ("Follow-up: when is the primary care follow-up due?", 0.15),
    "summary": ("Summarise this note for the primary care physician.", 0.075),
    "instructions": ("Write patient-friendly discharge instructions from this note.", 0.075),
}
SHORT_TASKS = ("urgency", "icd10", "drug_class", "follow_up")


@dataclass(frozen=True)
class Vitals:
    """The vital signs a note states."""

    systolic: int  # mmHg
    diastolic: int  # mmHg
    heart_rate: int  # beats per minute
    spo2: int  # percent
    temperature: float  # degrees Celsius, one decimal

    def text(self) -> str:
        return (
            f"Vitals: BP {self.systolic}/{self.diastolic} mmHg, HR {self.heart_rate} bpm, "
            f"SpO2 {self.spo2}%, temperature {self.temperature:.1f} C."
        )


def urgency(vitals: Vitals, condition: str) -> str:
    """The urgency rule: high on any critical vital sign; medium on any abnormal one or an acute diagnosis."""
    if vitals.spo2 < 90 or vitals.systolic < 90 or vitals.heart_rate > 130:
        return "high"
    abnormal = vitals.spo2 <= 93 or vitals.heart_rate > 100 or vitals.temperature >= 38.0 or vitals.systolic >= 180
    return "medium" if abnormal or CONDITIONS[condition][1] else "low"


@dataclass(frozen=True)
class Case:
    """What one note states; every answer is a function of it (see :func:`answer`)."""

    age: str
    condition: str
    medication: str
    vitals: Vitals
    follow_up_weeks: int


def answer(task: str, case: Case) -> str:
    """The reference answer of ``task`` for the note that states ``case`` (the documented rules)."""
    drug = case.medication.split()[0]
    weeks = f"{case.follow_up_weeks} week{'s' if case.follow_up_weeks != 1 else ''}"
    level = urgency(case.vitals, case.condition)
    if task == "urgency":
        return level
    if task == "icd10":
        return CONDITIONS[case.condition][0]
    if task == "drug_class":
        return MEDS[case.medication]
    if task == "follow_up":
        return f"in {weeks}"
    if task == "summary":
        return (
            f"{case.age}-year-old treated for {case.condition} ({level} urgency at triage); discharged on "
            f"{case.medication} ({MEDS[case.medication]}); primary care follow-up in {weeks}."
        )
    if task == "instructions":
        return (
            f"You were treated for {case.condition}. Take {drug} as prescribed ({case.medication}). "
            f"See your primary care doctor in {weeks}. Come back at once if you feel worse."
        )
    raise ValueError(f"unknown task {task!r}")


def _vitals(rng: random.Random) -> Vitals:
    """Vital signs: about a third normal, a third abnormal, a third with a critical sign."""
    sbp, dbp, hr, spo2 = rng.randint(105, 150), rng.randint(60, 90), rng.randint(60, 95), rng.randint(95, 99)
    temp = round(rng.uniform(36.2, 37.6), 1)
    kind = rng.random()
    if kind < 0.33:  # one critical sign
        which = rng.choice(["spo2", "sbp", "hr"])
        if which == "spo2":
            spo2 = rng.randint(82, 89)
        elif which == "sbp":
            sbp, dbp = rng.randint(70, 89), rng.randint(40, 55)
        else:
            hr = rng.randint(131, 160)
    elif kind < 0.66:  # one abnormal sign
        which = rng.choice(["spo2", "hr", "temp", "sbp"])
        if which == "spo2":
            spo2 = rng.randint(90, 93)
        elif which == "hr":
            hr = rng.randint(101, 130)
        elif which == "temp":
            temp = round(rng.uniform(38.0, 39.8), 1)
        else:
            sbp, dbp = rng.randint(180, 210), rng.randint(95, 120)
    return Vitals(sbp, dbp, hr, spo2, temp)


def _note(rng: random.Random, f: Fake, patient: str, age: str, mrn: str) -> tuple[str, Case]:
    case = Case(age, rng.choice(list(CONDITIONS)), rng.choice(list(MEDS)), _vitals(rng), rng.randint(1, 8))
    city, state = f.city()
    parts = [
        f"Patient: {patient}. MRN: {mrn}. DOB: {f.date()}.",
        f"{age}-year-old seen on {f.date()} with {case.condition}.",
        case.vitals.text(),
        f"Discharged on {case.medication}.",
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
    for extra in rng.sample(extras, k=rng.randint(1, 3)):
        parts.append(extra())
    weeks = case.follow_up_weeks
    parts.append(f"Follow up with primary care in {weeks} week{'s' if weeks != 1 else ''}.")
    return " ".join(parts), case


def generate_records(n: int = 600, seed: int = 2024) -> list[dict[str, object]]:
    """``n`` synthetic records: shared subjects, fake PHI of every type, ``n // 40`` exact and as many near
    duplicates. Each instruction is a task line, a blank line and a note; its response follows from the note."""
    rng = random.Random(seed)
    f = Fake(rng)
    names, weights = list(TASKS), [w for _, w in TASKS.values()]
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
            task = rng.choices(names, weights)[0]
            note, case = _note(rng, f, patient, age, mrn)
            rec: dict[str, object] = {"instruction": f"{TASKS[task][0]}\n\n{note}", "response": answer(task, case)}
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
    for src in rng.sample(records[base // 2 :], k=dup_count):  # near duplicates: one extra clause in the note
        near = dict(src)
        near["instruction"] = str(src["instruction"]) + " Chart reviewed."
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

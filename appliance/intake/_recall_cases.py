"""Labelled recall cases: one sentence per case, holding one known identifier of one placeholder type."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from appliance.intake._fake import Fake

__all__ = ["LabeledCase", "labeled_cases"]


@dataclass(frozen=True)
class LabeledCase:
    """One sentence holding one known identifier of one placeholder type."""

    kind: str
    value: str
    text: str
    in_lexicon: bool = True  # for NAME: whether the name's parts are in the census lexicon


def _templates(f: Fake) -> dict[str, list[Callable[[str], str]]]:
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
    f = Fake(rng)
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

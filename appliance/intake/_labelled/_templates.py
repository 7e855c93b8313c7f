"""The five note types of the labelled notes: each writes one note into a ``Note`` and returns its task."""

from __future__ import annotations

import random
from collections.abc import Callable

from appliance.intake._labelled._maker import Maker, Note, digits
from appliance.intake._labelled._vocab import DEVICES_KEPT, EXAM_EPONYMS, RELATIONS, SCALES

__all__ = ["BUILDERS"]


def _pick(r: random.Random, *options: str) -> str:
    return r.choice(options)


# --- note types ------------------------------------------------------------------------------------------------
def _discharge(m: Maker, n: Note) -> str:
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
    n.text("Exam notable for positive ").kept(r.choice(EXAM_EPONYMS)).text(".\n\n")
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


def _nursing(m: Maker, n: Note) -> str:
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
    n.kept(r.choice(SCALES)).text(", oriented x2. ")
    n.text("Gave ").kept(m.drug()).text(" at 0900 per order. ").kept(m.lab()).text(". ")
    n.kept(r.choice(DEVICES_KEPT)).text(" site clean and dry. ")
    relation = r.choice(RELATIONS)
    n.text(f"{relation} ").name(rel.given, rel).text(" at bedside, asked about visiting hours; ")
    n.text(_pick(r, "Family: ", "Contact: ")).name(rel.given, rel).text(" ").id("PHONE", m.phone()).text(". ")
    n.text("Dr. ").name(md.surname, md).text(" notified of ").kept(m.lab()).text("; ")
    n.text("new order for ").kept(m.drug()).text(". ")
    n.text("Family brought glasses; ").name(pt.surname, pt).text("'s dentures in cup at bedside. ")
    n.text("Vehicle in visitor lot, reg. ").id("VEHICLE", m.plate()).text(".\n")
    n.name(m.first_initial(rn), rn).text(f" ({r.choice(['RN', 'LPN', 'RN, BSN'])})")
    return "List the nursing concerns and the actions taken in this note."


def _referral(m: Maker, n: Note) -> str:
    r = m.r
    pt, to, by, gp = m.person("patient"), m.person("clinician"), m.person("clinician"), m.person("clinician")
    n.id("DATE", m.date()).text("\n\nDear Dr. ").name(to.surname, to).text(",\n\n")
    title = r.choice(["Mr.", "Mrs.", "Ms."])
    n.text(f"Re: {title} ").name(m.full(pt), pt).text(", DOB ").id("DATE", m.dob()).text(", NHS number ")
    n.id("ID", f"{digits(r, 3)} {digits(r, 3)} {digits(r, 4)}").text("\nAddress: ")
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


def _messages(m: Maker, n: Note) -> str:
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


def _signout(m: Maker, n: Note) -> str:
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


BUILDERS: dict[str, Callable[[Maker, Note], str]] = {
    "discharge": _discharge,
    "nursing": _nursing,
    "referral": _referral,
    "messages": _messages,
    "signout": _signout,
}

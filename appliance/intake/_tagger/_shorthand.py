"""Clinical shorthand for the tagger's training notes (template family ``train`` only): lines that hold no name.

Real notes are dense with what the narrative templates lack: exam headings ("Neuro: CN II-XII intact"), problem and
lab lists of acronyms and numbers ("PMH: HTN, DM2, CKD3", "Hgb 9.8, Plt 210"), sentences opened by a verb ("Spoke
with ...", "Diurese with IV Lasix"), and words that census lists also hold as surnames opening a sentence
("Brown urine", "Frank blood"). Without them the tagger read such tokens as names or places. Each line here is
labelled O throughout, except the ``{C}``/``{R}``/``{CG}`` slots that some verb lines carry ("Spoke with {C}"), so
the opener is learnt as a verb beside a real name. The word lists are general vocabulary, not sentences of any
measured note set.
"""

from __future__ import annotations

import random

__all__ = ["shorthand_lines"]


def _words(text: str) -> list[str]:
    return text.split()


ACRONYMS = _words(
    "HTN HLD DM2 T2DM CKD3 CKD4 ESRD CAD CHF HFrEF HFpEF COPD OSA GERD BPH AFib CVA TIA PE DVT OA RA SLE MDD GAD "
    "PTSD AKI UTI CAP SBO GIB UGIB DKA HHS SIADH ARDS NSTEMI STEMI ACS PAD PVD IBD IBS SVT LBBB RBBB AAA BPPV MS "
    "HIV HCV HBV TB MRSA VRE CDI ICH SAH SDH NPH CML AML ALL NHL MGUS ITP TTP HIT DIC"
)
MED_ABBREVIATIONS = _words("ASA NTG KCl MVI APAP HCTZ PPI ACEi ARB SSRI NSAID TPA LMWH UFH DOAC INH TMP-SMX")
LABS = _words(
    "Na K Cl HCO3 BUN Cr Glu WBC Hgb Hct Plt INR PTT AST ALT ALP Tbili Alb Lipase Trop BNP Lactate Mg Phos Ca TSH "
    "A1c CK CRP ESR Ferritin"
)
SYSTEMS = _words(
    "Gen GEN HEENT Neck CV Cardiac Resp Lungs Pulm Abd Abdomen GU Ext Extremities Neuro Psych Skin MSK Heme Back Vasc"
)
FINDINGS = [
    "NAD", "A&Ox3", "AAOx4", "RRR", "no m/r/g", "CTAB", "soft, NT/ND", "+BS", "no edema", "2+ pulses", "PERRLA",
    "EOMI", "MMM", "supple", "no JVD", "WWP", "no rash", "CN II-XII intact", "strength 5/5", "sensation intact",
    "clear", "rhonchi RLL", "crackles at bases", "scattered wheezes", "tachy", "irregularly irregular",
    "trace edema", "tender RUQ", "guarding", "no rebound", "steady gait", "flat affect", "calm, cooperative",
    "warm and dry", "intact", "diminished", "within normal limits", "unremarkable",
]  # fmt: skip
HEADINGS = _words(
    "Diet Activity Code Dispo Access Lines Drains Tele Pain Wound Imaging Micro Echo ECG EKG CXR CT MRI US Plan "
    "Assessment Subjective Objective Overnight Events Consults Allergies Meds PMH PSH FHx SHx ROS HPI CC A/P PPx "
    "Prophylaxis Nutrition Fluids Lytes Goals Precautions Mobility Vitals Labs Studies Procedures Isolation"
)
HEADING_VALUES = [
    "Cardiac", "Regular", "NPO", "Full code", "DNR/DNI", "Home", "SNF", "Acute rehab", "PIV x2", "PICC", "R IJ CVC",
    "JP drain", "Continuous", "Controlled", "Clean, dry, intact", "No acute findings", "Pending", "EF 55%",
    "NSR", "Sinus tachycardia", "Bibasilar atelectasis", "Stable", "Heparin SQ", "Contact", "Droplet",
    "As tolerated", "Bed rest", "Replete K and Mg", "None", "NKDA", "Negative", "Improving", "Unchanged",
]  # fmt: skip
VERB_OPENERS = _words(
    "Spoke Called Met Told Went Heard Felt Found Brought Took Held Sent Wrote Gave Left Kept Saw Ran Began Made Read "
    "Set Put Got Rose Fell Slept Ate Drank Walked Tolerated Continue Start Stop Hold Resume Monitor Recheck Repeat "
    "Consult Discuss Follow Titrate Wean Advance Encourage Educate Check Obtain Order Trend Replete Transfuse "
    "Consider Discontinue Reassess Page Notify Agree Diurese Chase Mark Draw Drew Turn Turned Paged Reviewed "
    "Discussed Updated Placed Removed Changed Applied Flushed Assisted Reinforced Offered Declined Refused Reports "
    "Denies Endorses Complains Feels Appears Remains Presents Returned Arrived Transferred Cleared Passed Voided "
    "Vomited Coughed Ambulated Dangled Sat Stood Woke Pulled Secured Cleaned Dressed Fed Bathed Medicated Tried "
    "Asked Answered Explained Reassured Instructed Taught Advised Counseled Scheduled Arranged Faxed Emailed"
)
VERB_TAILS = [
    "with {C} about the plan.", "with {C}, who agrees.", "to {C} re: results.", "{C} with the update.",
    "with the patient and family.", "to pharmacy to clarify the dose.", "with nursing re: fall precautions.",
    "the patient at bedside.", "home meds this morning.", "for the procedure.", "IV fluids overnight.",
    "labs in the morning.", "as needed for pain.", "with IV Lasix 40 BID.", "the site before surgery.",
    "lab results and call back.", "with {R} at bedside.", "the dressing this morning.", "to follow commands.",
    "well with minimal assistance.", "in the hallway with PT.", "the results with {CG}.", "a message for {C}.",
]  # fmt: skip
# lower-case words that census or locale lists also hold as surnames or given names
DUAL_WORDS = _words(
    "walker cane crutches chin tuck breast heel hand foot head neck back chest brown white green black gray rose "
    "hope faith grace bell banks fell works hill wood stone field marsh moss park lane ward page mark bill chase "
    "hunter cook mason porter turner fisher booth church dean hall king long young rich sharp short little small "
    "wise lamb fox wolf bush hay frank bishop baker bond cross day may march summer winter snow rain gold silver "
    "steel iron glass price cash case salt sugar honey rice bean pepper lemon orange cherry olive root branch reed "
    "brook pond lake river ford bridge tower house street shepherd hart cole gale"
)
DUAL_FRAMES = [
    "{W} noted on exam, stable.", "{W} discussed with the patient.", "{W} urine noted; UA sent.",
    "{W} area tender to palpation.", "{W} stool in the commode.", "{W} improvement since admission.",
]  # fmt: skip
# Lower-case forms ("with a walker") are left to the scrubber's rule for lower-case words in mixed-case text:
# taught here, they cost recall on lower-case notes, where the same words are names ("pt chen called").


def _exam(rng: random.Random) -> str:
    parts = [f"{s}: {', '.join(rng.sample(FINDINGS, rng.randint(1, 3)))}." for s in rng.sample(SYSTEMS, 3)]
    return " ".join(parts)


def _problems(rng: random.Random) -> str:
    meds = [f"{rng.choice(MED_ABBREVIATIONS)} {rng.choice([81, 325, 20, 40, 10, 0.4, 500])}" for _ in range(2)]
    return f"PMH: {', '.join(rng.sample(ACRONYMS, rng.randint(2, 5)))}. Meds: {', '.join(meds)}."


def _labs(rng: random.Random) -> str:
    values = [f"{lab} {round(rng.uniform(0.1, 250), rng.choice([0, 1, 2]))}" for lab in rng.sample(LABS, 5)]
    return rng.choice(["Labs: ", "Reviewed labs: ", "", "AM labs: "]) + ", ".join(values) + "."


def _headings(rng: random.Random) -> str:
    return " ".join(f"{h}: {rng.choice(HEADING_VALUES)}." for h in rng.sample(HEADINGS, rng.randint(1, 3)))


def _verb(rng: random.Random) -> str:
    return f"{rng.choice(VERB_OPENERS)} {rng.choice(VERB_TAILS)}"


def _dual(rng: random.Random) -> str:
    word = rng.choice(DUAL_WORDS)
    return rng.choice(DUAL_FRAMES).format(w=word, W=word.capitalize())


_MAKERS = (_exam, _problems, _labs, _headings, _verb, _verb, _dual, _dual)


def shorthand_lines(rng: random.Random, count: int) -> list[str]:
    """``count`` shorthand lines (templates: a verb line may carry a ``{C}``, ``{R}`` or ``{CG}`` slot)."""
    return [rng.choice(_MAKERS)(rng) for _ in range(count)]

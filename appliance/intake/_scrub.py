"""PHI detection and replacement with typed placeholders (HIPAA Safe Harbor, 45 CFR 164.514(b)(2)).

Each of the 18 Safe Harbor identifiers maps to a placeholder:

==============================================  ===================================================
Safe Harbor identifier                          placeholder
==============================================  ===================================================
(A) names                                       ``[NAME]``
(B) geographic subdivisions smaller than state  ``[ADDRESS]`` (street, unit, PO box, city, county), ``[ZIP]``
(C) dates (except year) and ages over 89        ``[DATE]``, ``[AGE]``
(D) telephone numbers                           ``[PHONE]``
(E) fax numbers                                 ``[FAX]``
(F) email addresses                             ``[EMAIL]``
(G) social security numbers                     ``[SSN]``
(H) medical record numbers                      ``[MRN]``
(I) health plan beneficiary numbers             ``[ID]``
(J) account numbers                             ``[ACCOUNT]`` (incl. Luhn-valid card numbers)
(K) certificate/license numbers                 ``[LICENSE]``
(L) vehicle identifiers, serials, plates        ``[VEHICLE]``
(M) device identifiers and serial numbers       ``[DEVICE]``
(N) web URLs                                    ``[URL]``
(O) IP addresses                                ``[IP]``
(P) biometric identifiers                       not present in text; a labelled identifier becomes ``[ID]``
(Q) full-face photographs                       not present in text
(R) any other unique identifying number/code    ``[ID]`` (labelled ids, long digit runs, mixed codes)
==============================================  ===================================================

Detectors run in a fixed priority order; a later detector never touches text an earlier one matched (an email
is not also a name, an MRN is not also a phone). Labelled identifiers ("MRN: 123") keep the label and lose the
value ("MRN: [MRN]"). The report counts replacements per type and never holds a value.

This module is the rule table only: the engine that runs it is ``_scrubber``, the metadata rules are ``_metadata``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from appliance.intake._case import STATES as _STATES

__all__ = ["PLACEHOLDER_TYPES", "PROBE_KINDS", "SEPARATORS", "Rule", "compiled_rules"]

PLACEHOLDER_TYPES = (
    "NAME",
    "DATE",
    "AGE",
    "PHONE",
    "FAX",
    "EMAIL",
    "SSN",
    "MRN",
    "ID",
    "ACCOUNT",
    "LICENSE",
    "VEHICLE",
    "DEVICE",
    "URL",
    "IP",
    "ADDRESS",
    "ZIP",
)

# --- building blocks -------------------------------------------------------------------------------------------
_SEP = r"\s*(?:[:#=]|\bno\.?|\bnumber\b|\bnum\b|\bnbr\b|\bid\b|\bis\b)?\s*(?:[:#=]\s*)?"
# at least one digit, 4-32 chars; or a number printed in groups ("123 4567", "1234 5678 9012")
_VALUE = r"(?P<v>\d{1,4}(?: \d{3,4}){1,5}(?![\w-])|(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,30}[A-Z0-9])"
_STATES_NO_CRED = "|".join(st for st in _STATES.split("|") if st not in ("MD", "PA"))
_STATE_NAMES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|Idaho|"
    "Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|Minnesota|Mississippi|"
    "Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|New York|North Carolina|North Dakota|"
    "Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|"
    "Virginia|Washington|West Virginia|Wisconsin|Wyoming|Puerto Rico"
)
_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|(?-i:May)|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?"
    r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_ORD = r"(?:st|nd|rd|th)?"
_STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Av|Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Court|Ct|Place|Pl|Terrace|Ter|Way"
    r"|Parkway|Pkwy|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Trl|Plaza|Plz|Alley|Aly|Row|Crescent|Cres|Close"
    r"|Loop|Pike|Turnpike|Path|Run|Walk|Expressway|Expy|Freeway|Fwy)"
)
# USPS suffixes that are also ordinary words ("Harbor", "Point", "Green"): a street only after a house number and
# a capitalised word, written capitalised ("3127 Gomez Harbor"; not "green" or "at this point")
_STREET_WORD_SUFFIX = (
    r"(?:Harbor|Harbour|Point|Bend|Ridge|Glen|Green|Landing|Knoll|Knolls|Crossing|Walks|Center|Centre|Hill|Hills"
    r"|Mountain|Port|Ports|Station|Stream|Summit|Valley|View|Views|Village|Ville|Vista|Burg|Bypass|Camp|Canyon"
    r"|Cape|Causeway|Cliff|Cliffs|Club|Common|Commons|Corner|Corners|Course|Cove|Coves|Creek|Crest|Dale|Dam"
    r"|Divide|Estate|Estates|Extension|Falls|Ferry|Field|Fields|Flat|Flats|Ford|Fords|Forest|Forge|Forges|Fork"
    r"|Forks|Fort|Garden|Gardens|Gateway|Grove|Groves|Haven|Heights|Hollow|Inlet|Island|Islands|Isle|Junction"
    r"|Junctions|Key|Keys|Lake|Lakes|Land|Lights|Lock|Locks|Lodge|Manor|Manors|Meadow|Meadows|Mews|Mill|Mills"
    r"|Mission|Motorway|Mount|Neck|Orchard|Oval|Overpass|Park|Parks|Pass|Passage|Pine|Pines|Plain|Plains"
    r"|Prairie|Radial|Ramp|Ranch|Rapid|Rapids|Rest|Ridges|River|Shoal|Shoals|Shore|Shores|Skyway|Spring|Springs"
    r"|Spur|Spurs|Stravenue|Track|Trafficway|Tunnel|Underpass|Union|Unions|Via|Viaduct|Wells)"
)
# non-US street forms: "Wilmsgasse 100", "Carstenstr. 23", "Madsstraat 79", "ul. Morska 25/14",
# "10 chemin Marc Bourdon", "18 boulevard André Thomas"
_CAP = r"[^\W\d_a-z]"  # approximately an upper-case letter of any script
_WORD_CAP = rf"{_CAP}[^\W\d_]*"
_STREET_ENDINGS = [
    e
    for w in [
        "gasse",
        "straße",
        "strasse",
        "weg",
        "platz",
        "allee",
        "ring",
        "damm",
        "ufer",
        "steeg",
        "straat",
        "baan",
        "laan",
        "pad",
        "gracht",
        "plein",
        "dijk",
        "kade",
        "singel",
        "hof",
        "markt",
        "boulevard",
    ]
    for e in (w, w.capitalize(), w.upper())
]
_STREET_ENDING_BEHIND = "|".join(rf"(?<=[^\W\d_]{{3}}{e})|(?<=-{e})" for e in _STREET_ENDINGS)
_FOREIGN_STREET = (
    # the whole (hyphenated) word is read once, then its ending is checked by fixed-width look-behinds: no
    # backtracking over every capitalised word of a note
    rf"(?<![^\W\d_]){_CAP}[^\W\d_]*+(?:-[^\W\d_]++){{0,3}}+"
    # a street name before the ending, 3 letters at least or a hyphenated word ("Wilmsgasse", "Osman-Müller-Ring";
    # not "Bring 2 tablets", "Spring 2024", a lone "Ring 5")
    rf"(?:{_STREET_ENDING_BEHIND}"
    rf"|(?<=[^\W\d_]{{3}}str)\.|(?<=[^\W\d_]{{3}}Str)\.)"
    rf"\s+\d{{1,5}}[a-zA-Z]?(?:/\d{{1,4}})?\b"
    rf"|\b(?i:ul\.|ulica|al\.|aleja|pl\.|plac|os\.|osiedle)\s+{_CAP}[^\W\d_-]*(?:[ -](?:{_WORD_CAP}|[IVX]+)){{0,3}}"
    rf"\s+\d{{1,4}}[a-zA-Z]?(?:/\d{{1,4}})?\b"
    rf"|\b\d{{1,4}}(?:\s?(?:bis|ter))?,?\s+(?:rue|chemin|avenue|boulevard|allée|impasse|place|quai|route|cours"
    rf"|passage|voie|via|viale|piazza|corso|calle|avenida|rua|travessa|praça|carrer)\s+"
    rf"(?:(?:de|du|des|la|le|di|del|della|da|do|dos|das)\s+|[ld]['’])*{_CAP}[^\W\d_'-]*(?:[ -]{_WORD_CAP}){{0,2}}"
)
# a town in free text after "lives (nearby) in", "resides in" ("Her father lives nearby in Antholz")
_LIVES_IN = r"\b(?:lives|living|resides|residing)(?:\s+(?:nearby|near|now|close\s+by))?\s+in\s+"
_UNIT_WORDS = [
    "Apt",
    "Apartment",
    "Suite",
    "Ste",
    "Unit",
    "Room",
    "Rm",
    "Floor",
    "Fl",
    "Bldg",
    "Building",
    "Lot",
    "Space",
    "Spc",
]
_UNIT = (  # Title or UPPER case ("Apt 4B", "APT 4B"); lower-case "unit 4" in a note is a ward, not an address
    r"(?:(?:" + "|".join(_UNIT_WORDS + [w.upper() for w in _UNIT_WORDS]) + r")\b|#)\.?\s*#?\s*[A-Z0-9][A-Z0-9-]*\b"
)
_PHONE_CORE = (
    r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}"
    r"|\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}"
    r"|\(\d{3}\)\d{3}-?\d{4}"
)
_EXT = r"(?:\s*(?i:ext\.?|x|extension)\s*\d{1,6})?"
_UNIT_WORD = r"(?:one|two|three|four|five|six|seven|eight|nine)"
_TEEN_WORD = r"(?:ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)"
# ages over 89 in words: "ninety", "ninety-eight", "one hundred", "a hundred and two", "one hundred twenty-one",
# "one-hundred-and-three"
_AGE_WORDS = (
    rf"(?:ninety(?:[\s-]{_UNIT_WORD})?|(?:(?:one|a)[\s-]+)?hundred(?:(?:[\s-]+and)?[\s-]"
    rf"(?:{_TEEN_WORD}|(?:twenty|thirty|forty)(?:[\s-]{_UNIT_WORD})?|{_UNIT_WORD}))?)"
)


@dataclass(frozen=True)
class Rule:
    """One detector: its placeholder type, its pattern (the value is group ``v``) and optional checks."""

    kind: str
    pattern: re.Pattern[str]
    check: Callable[[re.Match[str]], bool] | None = None
    kind_of: Callable[[str, re.Match[str]], str] | None = None  # refine the type from the surrounding text


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _valid_ipv6(m: re.Match[str]) -> bool:
    try:
        ipaddress.IPv6Address(m.group("v"))
    except ValueError:
        return False
    return True


def _plausible_date(m: re.Match[str]) -> bool:
    parts = [int(p) for p in re.findall(r"\d+", m.group("v"))]
    if len(parts) < 2:
        return False
    if parts[0] > 31 and len(str(parts[0])) == 4:  # yyyy-mm-dd
        return 1 <= parts[1] <= 12 and (len(parts) < 3 or 1 <= parts[2] <= 31)
    a, b = parts[0], parts[1]
    return 1 <= a <= 31 and 1 <= b <= 31 and (a <= 12 or b <= 12)


def _phone_shaped(m: re.Match[str]) -> bool:
    """8 to 15 digits, and not a dotted or dashed date ("05.03.2024", "05-03-24")."""
    value = m.group("v")
    digits = sum(c.isdigit() for c in value)
    date_or_decimal = re.fullmatch(r"\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d+[.,]\d+|\d{5}-\d{4}", value)
    return 8 <= digits <= 15 and date_or_decimal is None


def _digits(n: int) -> Callable[[re.Match[str]], bool]:
    return lambda m: sum(c.isdigit() for c in m.group("v")) >= n


def _phone_or_fax(text: str, m: re.Match[str]) -> str:
    window = text[max(0, m.start() - 24) : m.start()].lower()
    return "FAX" if re.search(r"\bfax|facsimile|\bf:", window) else "PHONE"


def _ctx(label: str, kind: str, value: str = _VALUE) -> Rule:
    """A labelled identifier: the label stays, the value is replaced."""
    # after a label ending in "#" ("Record # 445566") there is no word boundary, only the separator; an
    # abbreviated label keeps its full stop ("Acct. 1234567", "Record no. 445566")
    return Rule(kind, re.compile(rf"(?i:\b(?:{label}))(?:\b|(?<=#))\.?{_SEP}{value}", re.IGNORECASE))


def _rules() -> list[Rule]:
    ci = re.IGNORECASE
    date_num = (
        r"(?P<v>\b(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
        r"|\d{1,2}[-/]\d{1,2}[-/](?:\d{4}|\d{2})|(?<!\d\.)\d{1,2}\.\d{1,2}\.(?:\d{4}|\d{2})(?!\.\d))\b)"
    )
    date_words = (
        rf"(?P<v>\b(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*\.?,?\s+)?(?:"
        rf"{_MONTH}\.?\s+\d{{1,2}}{_ORD}(?:,?\s+(?:\d{{4}}|'\d{{2}}))?"  # March 3, 2024
        rf"|\d{{1,2}}{_ORD}\s+(?:of\s+)?{_MONTH}\.?(?:,?\s+\d{{4}})?"  # 3rd of March 2024
        rf"|{_MONTH}\.?,?\s+\d{{4}}"  # March 2024
        rf"|{_MONTH}-\d{{1,2}}-\d{{2,4}}|\d{{1,2}}-{_MONTH}-\d{{2,4}}"  # 03-Mar-2024
        rf")\b)"
    )
    return [
        # every quantifier below is bounded (RFC 5321/1035 limits): no pattern may go quadratic on a long line
        Rule(
            "EMAIL",
            re.compile(
                r"(?P<v>\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b)"
            ),
        ),
        Rule(
            "URL",
            re.compile(
                r"(?P<v>\b(?:(?:https?|ftp|sftp)://|www\.)[^\s<>\"'()\[\]]{0,2048}[^\s<>\"'()\[\].,;:!?]"
                r"|(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}"
                r"(?:com|org|net|edu|gov|mil|io|health|care|info|biz|us|uk|ca|de|fr|nl|eu|au)"
                r"(?:/[^\s<>\"'()\[\]]{0,2048}[^\s<>\"'()\[\].,;:!?])?\b)",
                ci,
            ),
        ),
        Rule(
            "IP",
            re.compile(
                # a full stop after it ends the sentence; one before a digit makes it a longer dotted number
                r"(?P<v>(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                r"(?!\d|\.\d))"
            ),
        ),
        Rule("IP", re.compile(r"(?P<v>(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]))"), _valid_ipv6),
        Rule("DEVICE", re.compile(r"(?P<v>\b(?:[0-9A-F]{2}[:-]){5}[0-9A-F]{2}\b)", ci)),  # MAC address
        # an IBAN, also printed in groups ("DE89 3704 0044 0532 0130 00")
        Rule(
            "ACCOUNT", re.compile(r"(?P<v>\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?\b)"), _digits(8)
        ),
        Rule("SSN", re.compile(r"(?P<v>\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b)")),
        _ctx(r"ssn|social\s+security(?:\s+(?:number|no|#))?|ss#", "SSN", r"(?P<v>\d{3}[-. ]?\d{2}[-. ]?\d{4})\b"),
        _ctx(
            r"mrn|medical\s+record(?:\s+(?:number|no|#))?|med\.?\s+rec(?:ord)?|record\s+(?:number|no|#)|chart"
            r"(?:\s+(?:number|no|#))?|hospital\s+(?:number|no|#)|patient\s+(?:id|number|no)|pt\s+(?:id|#)|unit\s+no",
            "MRN",
        ),
        _ctx(
            r"vin|vehicle\s+identification\s+number|vehicle\s+(?:id|serial)|license\s+plate|licence\s+plate|plate"
            r"(?:\s+(?:number|no|#))?|registration\s+plate|tag\s+(?:number|no|#)",
            "VEHICLE",
            r"(?P<v>(?=[A-Z0-9 -]*\d)[A-Z0-9][A-Z0-9 -]{1,16}[A-Z0-9])\b",
        ),
        _ctx(  # "reg. ABC-1234", "registration KA 12 AB 1234": a plate's letters and digits, in groups
            r"reg|car\s+reg|registration(?:\s+(?:no|number|plate))?|number\s+plate",
            "VEHICLE",
            # one block of 5-8 letters and digits mixed ("reg. 1JQP103", "plate 7ABC123"), or short groups
            r"(?P<v>(?=[A-Z]{0,7}\d)(?=\d{0,7}[A-Z])[A-Z0-9]{5,8}(?![\w-])"
            r"|(?=[A-Z0-9 -]*\d)(?=[A-Z0-9 -]*[A-Z])[A-Z0-9]{1,4}(?:[ -][A-Z0-9]{1,4}){0,3})\b",
        ),
        Rule(
            "VEHICLE",
            re.compile(r"(?P<v>\b(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])(?=[A-HJ-NPR-Z0-9]*\d)[A-HJ-NPR-Z0-9]{17}\b)"),
        ),
        _ctx(
            r"serial(?:\s+(?:number|no|#))?|s/n|sn|device\s+(?:id|identifier|serial)|udi|imei|implant\s+(?:id|serial)"
            r"|pacemaker\s+(?:id|serial)|model\s+(?:and\s+)?serial|lot(?:\s+(?:number|no|#))?|catalog\s+(?:number|no|#)",
            "DEVICE",
            r"(?P<v>(?=[A-Z0-9()/-]*\d)[A-Z0-9(][A-Z0-9()/-]{2,60}[A-Z0-9)])",
        ),
        Rule(
            "ACCOUNT",
            # 4-4-4-x (Visa, Mastercard...), 4-6-5 (American Express) and 4-6-4 (Diners Club) groupings
            re.compile(r"(?P<v>\b(?:\d{4}[ -]?\d{4}[ -]?\d{4}[ -]?\d{1,7}|\d{4}[ -]?\d{6}[ -]?\d{4,5})\b)"),
            lambda m: 13 <= len(re.sub(r"\D", "", m.group("v"))) <= 19 and _luhn(re.sub(r"\D", "", m.group("v"))),
        ),
        _ctx(
            r"account|acct|a/c|billing(?:\s+(?:account|number|no|#))?|invoice|bank\s+account|iban|routing"
            r"|credit\s+card|card",
            "ACCOUNT",
        ),
        _ctx(  # "state license 12.345678", "medical license G 12345", "licence no. A 123-456"
            # "license DEA G 92247", "licence NPI 12.345": the licence's kind may stand between label and value
            r"(?:(?:state|medical|professional|nursing|driver'?s?)\s+)?(?:licen[cs]e|lic|registration)"
            r"(?:\s+(?:dea|npi|state|medical|board|rn|md|no\.?|number|#))?",
            "LICENSE",
            r"(?P<v>(?:[A-Z]{1,3}[ .-]?)?\d{1,8}(?:[.\s-]\d{2,8}){0,2})\b(?![.,]\d)",
        ),
        _ctx(
            r"(?:driver'?s?\s+)?licen[cs]e|lic|dl|npi|dea|certificate|cert|board\s+certification|registration"
            r"|permit|passport",
            "LICENSE",
        ),
        Rule("LICENSE", re.compile(r"(?P<v>\b[ABFGMPRX][A-Z]\d{7}\b)")),  # DEA registration number format
        _ctx(
            r"member(?:\s+id)?|subscriber(?:\s+id)?|beneficiary(?:\s+(?:id|number))?|policy(?:\s+(?:number|no|#))?"
            r"|group(?:\s+(?:number|no|#))|insurance(?:\s+(?:id|number|no))?|health\s+plan(?:\s+(?:id|number))?"
            r"|medicare|medicaid|hicn|mbi|employee(?:\s+id)?|badge|claim(?:\s+(?:number|no|#))?|case(?:\s+(?:number|no|#))"
            r"|identifier|ident|id|fingerprint|biometric(?:\s+id)?|voiceprint|retina\s+scan",
            "ID",
        ),
        Rule("PHONE", re.compile(rf"(?P<v>(?<![\w+])(?:{_PHONE_CORE}){_EXT})(?!\w)"), kind_of=_phone_or_fax),
        _ctx(  # a local number without area code is printed in two groups ("Phone: 555-0143")
            r"phone|tel|telephone|cell|mobile|call|fax|pager|beeper",
            "PHONE",
            r"(?P<v>\+?\d{7,15}|\d{3}[-. ]\d{4})\b",
        ),
        Rule("DATE", re.compile(date_words, ci)),
        Rule("DATE", re.compile(date_num), _plausible_date),
        Rule(  # national and international numbers: "01.37.11.61.63", "+33 2 30 ...", "(06597) 61575 545"
            "PHONE",
            re.compile(
                r"(?P<v>(?<![\w.+/-])(?:\+\d{1,3}[\s.-]?|00\d{1,3}[\s.-]?|\(\+?\d{1,5}\)[\s.-]{0,2}|0\d{0,4}[\s.-]?"
                r"|\d{2}\s(?=\d{4,5}-\d{4}))(?:\d{1,6}[\s.-]?){1,5}\d{2,6}(?![\w/]|[.,]\d))"
            ),
            check=_phone_shaped,
            kind_of=_phone_or_fax,
        ),
        _ctx(
            r"dob|d\.o\.b\.?|date\s+of\s+birth|born(?:\s+on)?|on|dated|since|from|until|admitted|discharged|seen"
            r"|sign-?out|signed(?:\s+out)?|comparison|date|visit|admission|discharge|follow-?up|f/u|appt|appointment"
            r"|surgery|procedure|review(?:ed)?|updated?|as\s+of|last\s+seen|prior|previous|study|exam|shift(?:\s+note)?"
            r"|died|deceased|expired",
            "DATE",
            r"(?P<v>(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])|\d{8})\b",
        ),
        Rule(
            "AGE",
            re.compile(
                r"\b(?P<v>(?:9\d|1[0-4]\d)(?:\.\d)?)(?=\s*-?\s*(?:years?|yrs?|y/?o\b|yo\b|y\.o\.|-year|year-old"
                r"|years-old|yr-old))",
                ci,
            ),
        ),
        Rule("AGE", re.compile(r"(?i:\b(?:aged?|age:|age\s+is))\s*(?P<v>(?:9\d|1[0-4]\d))\b")),
        Rule("AGE", re.compile(rf"(?i)\b(?P<v>{_AGE_WORDS})(?=[\s-]*(?:years?\b|yrs?\b|y/?o\b|yo\b))")),
        Rule("AGE", re.compile(rf"(?i)\b(?:aged?|age:|age\s+is)\s*(?P<v>{_AGE_WORDS})\b")),  # "aged ninety"
        Rule("AGE", re.compile(r"\b(?P<v>(?:9\d|1[0-4]\d))\s*(?:M|F|yo|y)\b")),
        Rule(
            "ADDRESS",
            re.compile(
                rf"(?P<v>\b\d{{1,6}}[A-Z]?(?:-\d{{1,5}})?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
                rf"(?:(?:[A-Z][A-Za-z'-]*|\d{{1,4}}{_ORD})\s+){{1,4}}(?i:{_STREET_SUFFIX})\b\.?"
                rf"(?:\s+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?(?:,?\s+{_UNIT})?)"
            ),
        ),
        Rule(
            "ADDRESS",
            re.compile(
                r"(?<![\w-])(?P<v>(?:[A-Z][a-z]+\s+){1,3}(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Terrace"
                r"|Parkway|Highway)\b)"
            ),
        ),
        Rule(
            "ADDRESS",
            re.compile(
                rf"(?P<v>\b\d{{1,6}}[A-Z]?\s+(?:{_CAP}[^\W\d_'-]+(?:['-][^\W\d_]+)?\s+){{1,3}}{_STREET_WORD_SUFFIX})\b(?!-)"
            ),
        ),
        Rule("ADDRESS", re.compile(rf"(?P<v>{_FOREIGN_STREET})")),
        Rule("ADDRESS", re.compile(rf"{_LIVES_IN}(?P<v>{_WORD_CAP}(?:[ -]{_WORD_CAP}){{0,2}})")),
        Rule("ADDRESS", re.compile(r"(?P<v>\bP\.?\s?O\.?\s+Box\s+\d+\b|\b(?:Post\s+Office|PO)\s+Box\s+\d+\b)", ci)),
        Rule("ADDRESS", re.compile(rf"(?P<v>\b{_UNIT})", 0)),
        Rule(
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,?\s+(?:{_STATES})\s+\d{{5}}\b)"),
        ),
        Rule(  # "Springfield, IL." without a ZIP; MD and PA are left out (credentials: "Jane Doe, MD")
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,\s+(?:{_STATES_NO_CRED})\b(?:[,.;]|$))"),
        ),
        Rule(
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,\s+(?:{_STATE_NAMES})\b)"),
        ),
        Rule("ADDRESS", re.compile(r"(?P<v>\b(?:[A-Z][a-z]+\s+){1,2}(?:County|Parish|Borough|Township)\b)")),
        Rule(
            "ADDRESS",
            re.compile(
                r"(?i:\b(?:lives\s+in|resides\s+in|resident\s+of|from|moved\s+to|city:?|town:?))\s+"
                r"(?P<v>[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2})(?=,\s+[A-Z])"
            ),
        ),
        Rule("ZIP", re.compile(rf"(?:\b(?:{_STATES}|{_STATE_NAMES}),?\s+)(?P<v>\d{{5}}(?:-\d{{4}})?)\b")),
        _ctx(r"zip(?:\s*code)?|postal\s+code|postcode|zip\+4", "ZIP", r"(?P<v>\d{5}(?:-\d{4})?)\b"),
        # postcodes that need no state before them: UK ("SW1A 1AA"), Canada ("K1A 0B1"), Netherlands ("1234 AB City")
        Rule("ZIP", re.compile(r"(?P<v>\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}\b)")),
        Rule("ZIP", re.compile(r"(?P<v>\b[A-CEGHJ-NPR-TVXY]\d[A-CEGHJ-NPR-TV-Z]\s?\d[A-CEGHJ-NPR-TV-Z]\d\b)")),
        Rule("ZIP", re.compile(r"(?P<v>\b\d{4}\s?[A-Z]{2})\b(?=\s+[A-Z][a-z])")),
        # a bare 7-digit number is a record number (sign-out lists: "Smith 1234567"); not a decimal or a phone part
        Rule("MRN", re.compile(r"(?P<v>(?<![\w.,/:+-])\d{7}(?![\w/]|[.,:]\d|-\d))")),
        # any other unique identifying number: long digit runs and mixed letter+digit codes
        # not a decimal's digits ("0.12345678"); a full stop after it ends the sentence
        Rule("ID", re.compile(r"(?P<v>(?<!\w)(?<!\d[.,])\d{8,}(?!\w)(?![.,]\d))")),
        Rule(
            "ID",
            re.compile(
                r"(?P<v>(?<![\w-])(?=[A-Z0-9-]*[A-Z])(?=(?:[A-Z-]*\d){5})[A-Z0-9][A-Z0-9-]{5,}[A-Z0-9](?![\w-]))",
                ci,  # "ref xk55321" is as identifying as "XK55321"
            ),
        ),
    ]


_COMPILED: list[Rule] = []


def compiled_rules() -> list[Rule]:
    """The detectors in priority order, compiled once."""
    if not _COMPILED:
        _COMPILED.extend(_rules())
    return _COMPILED


PROBE_KINDS = frozenset({"DATE", "ADDRESS", "ZIP"})  # rules whose patterns depend on letter case

# Unicode hyphens and dashes (word processors turn "617-555-1234" into "617–555–1234"): the rules read them as "-";
# Unicode spaces (no-break, thin, figure...: "123\u00a045\u00a06789") as " "
SEPARATORS = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-")
    | dict.fromkeys(
        "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "
    )
)

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
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.intake._case import STATES as _STATES
from appliance.intake._case import case_normalised as _case_normalised
from appliance.intake._names import find_names, labelled_name_tokens, propagate_spans
from appliance.intake._suspects import drop_protected, tagged_spans

__all__ = ["PLACEHOLDER_TYPES", "ScrubReport", "Scrubber"]

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

Span = tuple[int, int, str]  # start, end, placeholder type
# name spans, name tokens and place spans found in one text
_NameHits = tuple[list[tuple[int, int]], set[str], list[tuple[int, int]]]

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
class _Rule:
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


def _ctx(label: str, kind: str, value: str = _VALUE) -> _Rule:
    """A labelled identifier: the label stays, the value is replaced."""
    # after a label ending in "#" ("Record # 445566") there is no word boundary, only the separator; an
    # abbreviated label keeps its full stop ("Acct. 1234567", "Record no. 445566")
    return _Rule(kind, re.compile(rf"(?i:\b(?:{label}))(?:\b|(?<=#))\.?{_SEP}{value}", re.IGNORECASE))


def _rules() -> list[_Rule]:
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
        _Rule(
            "EMAIL",
            re.compile(
                r"(?P<v>\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b)"
            ),
        ),
        _Rule(
            "URL",
            re.compile(
                r"(?P<v>\b(?:(?:https?|ftp|sftp)://|www\.)[^\s<>\"'()\[\]]{0,2048}[^\s<>\"'()\[\].,;:!?]"
                r"|(?<![\w.-])(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.){1,8}"
                r"(?:com|org|net|edu|gov|mil|io|health|care|info|biz|us|uk|ca|de|fr|nl|eu|au)"
                r"(?:/[^\s<>\"'()\[\]]{0,2048}[^\s<>\"'()\[\].,;:!?])?\b)",
                ci,
            ),
        ),
        _Rule(
            "IP",
            re.compile(
                # a full stop after it ends the sentence; one before a digit makes it a longer dotted number
                r"(?P<v>(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                r"(?!\d|\.\d))"
            ),
        ),
        _Rule("IP", re.compile(r"(?P<v>(?<![\w:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:]))"), _valid_ipv6),
        _Rule("DEVICE", re.compile(r"(?P<v>\b(?:[0-9A-F]{2}[:-]){5}[0-9A-F]{2}\b)", ci)),  # MAC address
        # an IBAN, also printed in groups ("DE89 3704 0044 0532 0130 00")
        _Rule(
            "ACCOUNT", re.compile(r"(?P<v>\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}(?:\s?[A-Z0-9]{1,3})?\b)"), _digits(8)
        ),
        _Rule("SSN", re.compile(r"(?P<v>\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b)")),
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
        _Rule(
            "VEHICLE",
            re.compile(r"(?P<v>\b(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])(?=[A-HJ-NPR-Z0-9]*\d)[A-HJ-NPR-Z0-9]{17}\b)"),
        ),
        _ctx(
            r"serial(?:\s+(?:number|no|#))?|s/n|sn|device\s+(?:id|identifier|serial)|udi|imei|implant\s+(?:id|serial)"
            r"|pacemaker\s+(?:id|serial)|model\s+(?:and\s+)?serial|lot(?:\s+(?:number|no|#))?|catalog\s+(?:number|no|#)",
            "DEVICE",
            r"(?P<v>(?=[A-Z0-9()/-]*\d)[A-Z0-9(][A-Z0-9()/-]{2,60}[A-Z0-9)])",
        ),
        _Rule(
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
        _Rule("LICENSE", re.compile(r"(?P<v>\b[ABFGMPRX][A-Z]\d{7}\b)")),  # DEA registration number format
        _ctx(
            r"member(?:\s+id)?|subscriber(?:\s+id)?|beneficiary(?:\s+(?:id|number))?|policy(?:\s+(?:number|no|#))?"
            r"|group(?:\s+(?:number|no|#))|insurance(?:\s+(?:id|number|no))?|health\s+plan(?:\s+(?:id|number))?"
            r"|medicare|medicaid|hicn|mbi|employee(?:\s+id)?|badge|claim(?:\s+(?:number|no|#))?|case(?:\s+(?:number|no|#))"
            r"|identifier|ident|id|fingerprint|biometric(?:\s+id)?|voiceprint|retina\s+scan",
            "ID",
        ),
        _Rule("PHONE", re.compile(rf"(?P<v>(?<![\w+])(?:{_PHONE_CORE}){_EXT})(?!\w)"), kind_of=_phone_or_fax),
        _ctx(  # a local number without area code is printed in two groups ("Phone: 555-0143")
            r"phone|tel|telephone|cell|mobile|call|fax|pager|beeper",
            "PHONE",
            r"(?P<v>\+?\d{7,15}|\d{3}[-. ]\d{4})\b",
        ),
        _Rule("DATE", re.compile(date_words, ci)),
        _Rule("DATE", re.compile(date_num), _plausible_date),
        _Rule(  # national and international numbers: "01.37.11.61.63", "+33 2 30 ...", "(06597) 61575 545"
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
        _Rule(
            "AGE",
            re.compile(
                r"\b(?P<v>(?:9\d|1[0-4]\d)(?:\.\d)?)(?=\s*-?\s*(?:years?|yrs?|y/?o\b|yo\b|y\.o\.|-year|year-old"
                r"|years-old|yr-old))",
                ci,
            ),
        ),
        _Rule("AGE", re.compile(r"(?i:\b(?:aged?|age:|age\s+is))\s*(?P<v>(?:9\d|1[0-4]\d))\b")),
        _Rule("AGE", re.compile(rf"(?i)\b(?P<v>{_AGE_WORDS})(?=[\s-]*(?:years?\b|yrs?\b|y/?o\b|yo\b))")),
        _Rule("AGE", re.compile(rf"(?i)\b(?:aged?|age:|age\s+is)\s*(?P<v>{_AGE_WORDS})\b")),  # "aged ninety"
        _Rule("AGE", re.compile(r"\b(?P<v>(?:9\d|1[0-4]\d))\s*(?:M|F|yo|y)\b")),
        _Rule(
            "ADDRESS",
            re.compile(
                rf"(?P<v>\b\d{{1,6}}[A-Z]?(?:-\d{{1,5}})?\s+(?:[NSEW]\.?\s+|(?:North|South|East|West)\s+)?"
                rf"(?:(?:[A-Z][A-Za-z'-]*|\d{{1,4}}{_ORD})\s+){{1,4}}(?i:{_STREET_SUFFIX})\b\.?"
                rf"(?:\s+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?(?:,?\s+{_UNIT})?)"
            ),
        ),
        _Rule(
            "ADDRESS",
            re.compile(
                r"(?<![\w-])(?P<v>(?:[A-Z][a-z]+\s+){1,3}(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Terrace"
                r"|Parkway|Highway)\b)"
            ),
        ),
        _Rule(
            "ADDRESS",
            re.compile(
                rf"(?P<v>\b\d{{1,6}}[A-Z]?\s+(?:{_CAP}[^\W\d_'-]+(?:['-][^\W\d_]+)?\s+){{1,3}}{_STREET_WORD_SUFFIX})\b(?!-)"
            ),
        ),
        _Rule("ADDRESS", re.compile(rf"(?P<v>{_FOREIGN_STREET})")),
        _Rule("ADDRESS", re.compile(rf"{_LIVES_IN}(?P<v>{_WORD_CAP}(?:[ -]{_WORD_CAP}){{0,2}})")),
        _Rule("ADDRESS", re.compile(r"(?P<v>\bP\.?\s?O\.?\s+Box\s+\d+\b|\b(?:Post\s+Office|PO)\s+Box\s+\d+\b)", ci)),
        _Rule("ADDRESS", re.compile(rf"(?P<v>\b{_UNIT})", 0)),
        _Rule(
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,?\s+(?:{_STATES})\s+\d{{5}}\b)"),
        ),
        _Rule(  # "Springfield, IL." without a ZIP; MD and PA are left out (credentials: "Jane Doe, MD")
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,\s+(?:{_STATES_NO_CRED})\b(?:[,.;]|$))"),
        ),
        _Rule(
            "ADDRESS",
            re.compile(rf"(?P<v>\b[A-Z][a-z]+(?:[ -][A-Z][a-z]+){{0,2}})(?=,\s+(?:{_STATE_NAMES})\b)"),
        ),
        _Rule("ADDRESS", re.compile(r"(?P<v>\b(?:[A-Z][a-z]+\s+){1,2}(?:County|Parish|Borough|Township)\b)")),
        _Rule(
            "ADDRESS",
            re.compile(
                r"(?i:\b(?:lives\s+in|resides\s+in|resident\s+of|from|moved\s+to|city:?|town:?))\s+"
                r"(?P<v>[A-Z][a-z]+(?:[ -][A-Z][a-z]+){0,2})(?=,\s+[A-Z])"
            ),
        ),
        _Rule("ZIP", re.compile(rf"(?:\b(?:{_STATES}|{_STATE_NAMES}),?\s+)(?P<v>\d{{5}}(?:-\d{{4}})?)\b")),
        _ctx(r"zip(?:\s*code)?|postal\s+code|postcode|zip\+4", "ZIP", r"(?P<v>\d{5}(?:-\d{4})?)\b"),
        # postcodes that need no state before them: UK ("SW1A 1AA"), Canada ("K1A 0B1"), Netherlands ("1234 AB City")
        _Rule("ZIP", re.compile(r"(?P<v>\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}\b)")),
        _Rule("ZIP", re.compile(r"(?P<v>\b[A-CEGHJ-NPR-TVXY]\d[A-CEGHJ-NPR-TV-Z]\s?\d[A-CEGHJ-NPR-TV-Z]\d\b)")),
        _Rule("ZIP", re.compile(r"(?P<v>\b\d{4}\s?[A-Z]{2})\b(?=\s+[A-Z][a-z])")),
        # a bare 7-digit number is a record number (sign-out lists: "Smith 1234567"); not a decimal or a phone part
        _Rule("MRN", re.compile(r"(?P<v>(?<![\w.,/:+-])\d{7}(?![\w/]|[.,:]\d|-\d))")),
        # any other unique identifying number: long digit runs and mixed letter+digit codes
        # not a decimal's digits ("0.12345678"); a full stop after it ends the sentence
        _Rule("ID", re.compile(r"(?P<v>(?<!\w)(?<!\d[.,])\d{8,}(?!\w)(?![.,]\d))")),
        _Rule(
            "ID",
            re.compile(
                r"(?P<v>(?<![\w-])(?=[A-Z0-9-]*[A-Z])(?=(?:[A-Z-]*\d){5})[A-Z0-9][A-Z0-9-]{5,}[A-Z0-9](?![\w-]))",
                ci,  # "ref xk55321" is as identifying as "XK55321"
            ),
        ),
    ]


_COMPILED: list[_Rule] = []


def _compiled() -> list[_Rule]:
    if not _COMPILED:
        _COMPILED.extend(_rules())
    return _COMPILED


# Metadata keys that say what their value is: the whole value (string or number) becomes that placeholder. Keys
# are matched in a normal spelling ("patientId", "Patient Name", "medical-record-number" -> "patient_id",
# "patient_name", "medical_record_number"), after optional qualifiers ("home_phone", "patient_mrn") and with an
# optional number suffix ("mrn_number", "ssn_no").
_QUAL = (
    r"(?:(?:patient|pt|home|work|office|mobile|cell|primary|secondary|alt|alternate|emergency|contact|guarantor"
    r"|subscriber|mailing|billing|current|previous|prior|personal|mother|father|spouse|guardian|kin|next_of_kin)_)*"
)
_NUM = r"(?:_?(?:number|no|num|nbr|id))?"
_KEY_TYPES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^{_QUAL}(?:{p})$"), kind)
    for p, kind in (
        (
            r"(?:first_?|last_?|full_?|given_?|family_?|middle_?|maiden_?|sur)?name|(?:provider|physician|doctor|nurse)(?:_?name)?",
            "NAME",
        ),
        (r"dob|birth_?date|date_?of_?birth|admi(?:t|ssion)_?date|discharge_?date|death_?date|visit_?date", "DATE"),
        (rf"(?:phone|tel|telephone|mobile|cell|pager){_NUM}", "PHONE"),
        (rf"fax{_NUM}", "FAX"),
        (r"e?_?mail(?:_?addr(?:ess)?)?", "EMAIL"),
        (rf"(?:ssn|social_?security){_NUM}|ssn_last_?4", "SSN"),
        (rf"(?:mrn|medical_?record|med_?rec){_NUM}|(?:chart|hospital|record)_?(?:number|no|num|nbr)", "MRN"),
        (rf"(?:account|acct|bank_?account|credit_?card|card|iban){_NUM}", "ACCOUNT"),
        (rf"(?:(?:drivers?_?)?licen[cs]e|npi|dea|passport){_NUM}", "LICENSE"),
        (rf"(?:vin|plate|license_?plate){_NUM}", "VEHICLE"),
        (rf"(?:serial|device_?id|udi|imei){_NUM}", "DEVICE"),
        (r"url|website|homepage", "URL"),
        (r"ip|ip_?address", "IP"),
        (r"address(?:_?line_?\d)?|addr|street|street_?address|city|county|town", "ADDRESS"),
        (r"zip|zip_?code|zip_?4|postal_?code|postcode", "ZIP"),
        (
            r"(?:member|policy|insurance|beneficiary|health_?plan|subscriber|patient|pt|person|encounter|visit"
            r"|admission|case|claim|employee|group)_?(?:id|identifier|number|no|num|nbr)|id|identifier",
            "ID",
        ),
    )
]
_LONG_NUMBER = 10_000  # an integer in metadata at or above this is treated as an identifier


@dataclass
class ScrubReport:
    """Replacement counts per placeholder type (never values) and how many records/fields changed."""

    counts: Counter[str] = field(default_factory=Counter)
    records: int = 0
    records_changed: int = 0

    def add(self, other: Counter[str]) -> None:
        self.counts.update(other)

    def as_dict(self) -> dict[str, int]:
        """Counts for every placeholder type (zeros included), in a stable order."""
        return {kind: int(self.counts.get(kind, 0)) for kind in PLACEHOLDER_TYPES}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_PROBE_KINDS = frozenset({"DATE", "ADDRESS", "ZIP"})  # rules whose patterns depend on letter case


def _iter_spans(text: str, probe: str | None = None) -> Iterator[Span]:
    """Spans of every rule, in priority order; ``probe`` (a word-cased copy of an ALL-CAPS text, same length)
    is searched too by the rules that depend on letter case."""
    for rule in _compiled():
        targets = [text] if probe is None or rule.kind not in _PROBE_KINDS else [text, probe]
        for target in targets:
            for m in rule.pattern.finditer(target):
                if rule.check is not None and not rule.check(m):
                    continue
                kind = rule.kind_of(target, m) if rule.kind_of is not None else rule.kind
                start, end = m.span("v")
                if end > start:
                    yield start, end, kind


def _select(spans: Iterable[Span]) -> list[Span]:
    """Keep spans in priority order (the order they arrive), dropping any that overlap one already kept."""
    kept: list[Span] = []  # sorted by start, non-overlapping: only the neighbours can overlap a new span
    for span in spans:
        i = bisect.bisect_left(kept, span)
        if i > 0 and kept[i - 1][1] > span[0]:
            continue
        if i < len(kept) and kept[i][0] < span[1]:
            continue
        kept.insert(i, span)
    return kept


def _cover(kept: list[Span], span: Span) -> list[Span]:
    """``kept`` with the declared ``span`` replaced too, merged with the spans it overlaps into one of its type (a
    value a rule matched only in part loses its rest as well); unchanged when one kept span strictly contains it."""
    start, end, kind = span
    over = [k for k in kept if k[0] < end and start < k[1]]
    if len(over) == 1 and over[0][0] <= start and end <= over[0][1] and (over[0][0], over[0][1]) != (start, end):
        return kept
    merged = (min([start] + [k[0] for k in over]), max([end] + [k[1] for k in over]), kind)
    rest = [k for k in kept if k not in over]
    bisect.insort(rest, merged)
    return rest


def _fill(kept: list[Span], text: str, start: int, end: int) -> list[Span]:
    """``kept`` plus an [ADDRESS] span for each stretch of ``text[start:end]`` that no kept span covers and that holds
    a letter or digit."""
    pos = start
    gaps: list[Span] = []
    for k in kept[max(0, bisect.bisect_left(kept, (start, -1, "")) - 1) :]:
        if k[0] >= end:
            break
        if k[1] <= pos:
            continue
        if k[0] > pos:
            gaps.append((pos, k[0], "ADDRESS"))
        pos = max(pos, k[1])
    if pos < end:
        gaps.append((pos, end, "ADDRESS"))
    for g_start, g_end, kind in gaps:
        piece = text[g_start:g_end]
        stripped = piece.strip(" \t\n,.;:-/()")
        if any(c.isalnum() for c in stripped):
            lead = g_start + piece.index(stripped)
            bisect.insort(kept, (lead, lead + len(stripped), kind))
    return kept


def _merge_names(text: str, spans: list[Span]) -> list[Span]:
    """Adjacent name tokens become one span ("Jane Q. Smith" -> one [NAME])."""
    merged: list[Span] = []
    for span in spans:
        if merged and span[2] == "NAME" and merged[-1][2] == "NAME":
            between = text[merged[-1][1] : span[0]]
            if re.fullmatch(r"\s+|\s*[A-Z]\.\s*|\s+[A-Z]\.?\s+|-", between):
                merged[-1] = (merged[-1][0], span[1], "NAME")
                continue
        merged.append(span)
    return merged


def _apply(text: str, spans: list[Span]) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    out: list[str] = []
    pos = 0
    for start, end, kind in _merge_names(text, spans):
        out.append(text[pos:start])
        out.append(f"[{kind}]")
        counts[kind] += 1
        pos = end
    out.append(text[pos:])
    return "".join(out), counts


# Unicode hyphens and dashes (word processors turn "617-555-1234" into "617–555–1234"): the rules read them as "-";
# Unicode spaces (no-break, thin, figure...: "123\u00a045\u00a06789") as " "
_SEPARATORS = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-")
    | dict.fromkeys(
        "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000", " "
    )
)


class Scrubber:
    """Replaces PHI in text with typed placeholders; one instance can be reused across records (stateless)."""

    def scrub_text(self, text: str, known_names: Iterable[str] = ()) -> tuple[str, Counter[str]]:
        """``text`` with PHI replaced, and the replacement counts per type."""
        text, counts, _ = self._scrub(text, known_names)
        return text, counts

    def _scrub(
        self,
        text: str,
        known_names: Iterable[str],
        found: _NameHits | None = None,
        declared: _Declared = (),
    ) -> tuple[str, Counter[str], set[str]]:
        view = text.translate(_SEPARATORS)  # same length as text, as is probe: spans found in them apply to text
        probe, mode = _case_normalised(view)
        spans = list(_iter_spans(view, probe if mode else None))
        if found is None:
            found = _find_names(view, probe, mode)
        own_spans, tokens, places = found
        name_spans = drop_protected(view, own_spans + propagate_spans(view, set(known_names) - tokens))
        spans.extend((s, e, "NAME") for s, e in sorted(name_spans, key=lambda se: (se[0], -se[1])))
        kept = _select(spans)
        for s, e in places:  # the tagger's place words fill what no rule took ("12 [NAME] Bridge" -> all replaced)
            kept = _fill(kept, view, s, e)
        for pattern, kind in declared:
            for m in pattern.finditer(view):
                kept = _cover(kept, (m.start(), m.end(), kind))
        new, counts = _apply(text, kept)
        return new, counts, tokens

    def scrub_fields(
        self, fields: dict[str, Any], context: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], Counter[str]]:
        """Scrub every string in a record's fields (nested metadata included); names found anywhere are
        replaced everywhere in the record, and so are the identifier values its metadata declares
        ({"mrn": "7654321"}). ``context`` (the metadata, when it is not itself output) declares them too, but is
        neither scrubbed nor counted."""
        declared = _declared_patterns([fields, context])
        tokens: set[str] = set()
        hits: dict[str, _NameHits] = {}
        for text in _strings(fields):
            if text not in hits:
                view = text.translate(_SEPARATORS)
                hits[text] = _find_names(view, *_case_normalised(view))
                tokens |= hits[text][1]
        tokens |= _labelled_names([fields, context])  # a metadata name field names the patient everywhere
        counts: Counter[str] = Counter()

        def walk(value: Any, key: str | None = None, inherited: str | None = None) -> Any:
            kind = _key_type(key) or inherited  # {"mrn": {"value": ...}}: the object's scalars are the MRN
            scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
            if kind is not None and scalar and not (isinstance(value, str) and _is_placeholder(value)):
                counts[kind] += 1
                return f"[{kind}]"
            if isinstance(value, str):
                new, c, _ = self._scrub(value, tokens, hits.get(value), declared)
                counts.update(c)
                return new
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _LONG_NUMBER and key:
                counts["ID"] += 1
                return "[ID]"
            if isinstance(value, dict):
                out: dict[str, Any] = {}
                for k, v in value.items():
                    out[self._scrub_key(k, tokens, counts, out, declared)] = walk(v, k, kind)
                return out
            if isinstance(value, list):
                return [walk(v, key, inherited) for v in value]
            return value

        out = {k: walk(v, None if k in ("instruction", "response") else k) for k, v in fields.items()}
        return out, counts

    def _scrub_key(
        self, key: str, tokens: set[str], counts: Counter[str], taken: dict[str, Any], declared: _Declared
    ) -> str:
        """A metadata key can itself be PHI ({"John Smith": ...}): scrub it; keep keys unique ("[NAME]#2")."""
        new, c, _ = self._scrub(key, tokens, None, declared)
        counts.update(c)
        unique, n = new, 1
        while unique in taken:
            n += 1
            unique = f"{new}#{n}"
        return unique


def _find_names(text: str, probe: str, mode: str) -> _NameHits:
    """Names in a text of any case: ALL-CAPS and lower-case texts are searched in their word-cased copy with the
    lexicon-only rules; lower-case text also gets the lower-case rules on the original. The CRF tagger adds the
    tokens it reads as names (and place words), in any case."""
    if not mode:
        spans, tokens = find_names(text, lower_pairs=False)
    else:
        spans, tokens = find_names(probe, lexicon_only=True)
        if mode == "lower":
            more, lower_tokens = find_names(text)
            spans, tokens = spans + more, tokens | lower_tokens
    tagged, tagged_tokens, places = tagged_spans(text, mode)
    tokens |= tagged_tokens
    return spans + tagged + propagate_spans(text, tagged_tokens), tokens, places


# A metadata value under an identifier key ({"mrn": "7654321"}) is replaced wherever it stands in the record's text.
# It must look like an identifier: 5 or more digits when it is all digits (shorter numbers are years, doses and
# lab values: a declared "1234" or "12" is not carried), 4 or more letters and digits when it has a letter (it must
# then match as a whole word: "Reno" but not "Ada"). Matching ignores case and Unicode dashes, takes any
# separator (space, . - / parentheses) where the value has one, and digit grouping where it has none
# ("7654321" also matches "765 4321" and "765-4321").
_MIN_DIGITS, _MIN_ALNUM = 5, 4
_GAP = r"[\s.\-/()]{0,3}"  # where the value has a separator
_GROUP = r"[\s\-]?"  # between digits, or a letter and a digit, where it has none
_Declared = tuple[tuple[re.Pattern[str], str], ...]


def _declared_values(value: Any, kind: str | None = None) -> Iterator[tuple[str, str | int]]:
    """(kind, value) of every scalar under an identifier key. An object or list under one declares all its
    scalars ({"mrn": {"value": ...}}, FHIR's "identifier": [{"value": ...}]), unless a key inside names another."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _declared_values(v, _key_type(k) or kind)
    elif isinstance(value, list):
        for v in value:
            yield from _declared_values(v, kind)
    elif kind is not None and isinstance(value, str | int) and not isinstance(value, bool):
        yield kind, value


def _declared_patterns(value: Any) -> _Declared:
    """Patterns for the identifier values declared under identifier keys (names excepted: they are tokens)."""
    found: dict[str, str] = {}
    for kind, v in _declared_values(value):
        if kind == "NAME":
            continue
        text = str(v).translate(_SEPARATORS)
        for part in [text, *re.split(r"[,;\n]", text)]:  # "12 Elm St, Reno": the street, the city
            regex = _declared_regex(part)
            if regex is not None:
                found.setdefault(regex, kind)
    return tuple((re.compile(r, re.IGNORECASE), kind) for r, kind in found.items())


def _declared_regex(value: str) -> str | None:
    """A regex for ``value`` (see _MIN_DIGITS), or None when it is too short to be told from other text."""
    chars = [c for c in value if c.isalnum()]
    digits_only = all(c.isdigit() for c in chars)
    if len(chars) < (_MIN_DIGITS if digits_only else _MIN_ALNUM) or _is_placeholder(value):
        return None
    out: list[str] = []
    prev, gap = "", False
    for c in value.strip():
        if c.isspace() or c in ".-/()":
            gap = True
            continue
        if prev:
            if gap:
                out.append(_GAP)
            elif c.isalnum() and prev.isalnum() and (c.isdigit() or prev.isdigit()):
                out.append(_GROUP)
        out.append(re.escape(c))
        prev, gap = c, False
    # whole values only: not inside a longer word or number ("17654321", "7654321.5", "0.02115")
    return r"(?<![^\W_])(?<!\d[.,])" + "".join(out) + r"(?![^\W_])(?![.,]\d)"


def _labelled_names(value: Any) -> set[str]:
    """Name tokens of the strings under keys that say they hold a name (``patient_name``, ``physician``...)."""
    return {
        t
        for kind, v in _declared_values(value)
        if kind == "NAME" and isinstance(v, str)
        for t in labelled_name_tokens(v)
    }


def _key_type(key: str | None) -> str | None:
    if not key:
        return None
    norm = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key[:100])  # camelCase -> camel_Case
    norm = re.sub(r"[^a-z0-9]+", "_", norm.lower()).strip("_")
    for pattern, kind in _KEY_TYPES:
        if pattern.match(norm):
            return kind
    return None


def _is_placeholder(value: str) -> bool:
    return re.fullmatch(r"\[[A-Z]+\]", value.strip()) is not None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)

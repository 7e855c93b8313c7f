"""Person-name detection without a statistical NER model: a census lexicon plus honorific and context rules.

Why not spaCy/Presidio: Presidio needs a spaCy model, Explosion does not publish its models on PyPI, and the only
PyPI wheels of ``en_core_web_sm`` are re-uploads by third parties whose provenance we cannot verify. An unverified
model in a PHI pipeline is a supply-chain risk, and spaCy would add a dozen compiled dependencies. See
``appliance/intake/README.md`` for the measured recall of what we use instead.

Rules, applied to one record's text (all fields together, so a surname found once is found everywhere):

1. Honorific: ``Dr.|Mr.|Mrs.|Ms.|Miss|Mx.|Prof.`` followed by up to three capitalised tokens or initials.
2. Context: a trigger (``patient``, ``name:``, ``son``, ``wife``, ``seen by``, ``signed by``...) followed by
   capitalised tokens that are not common English or clinical words.
3. Credentials: capitalised tokens followed by ``, MD``/``RN``/``DO``/``NP``/``PA-C``/``PhD``...
4. Lexicon pair: a census given name followed by a census surname (optionally with a middle initial), and
   ``Surname, Given``.
5. Lexicon single: a census given name that is not also a common word (``May``, ``Will``, ``Hope``...).
6. Propagation: every token found by rules 1-5 is also replaced wherever else it occurs in the record.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import lru_cache

from appliance.intake._lexicon import lexicon

__all__ = ["COMMON_WORDS", "find_names", "labelled_name_tokens", "propagate_spans"]

# Upper-case letters of any script as a class the standard library compiles to a fast bitmap (its re has no \p{Lu});
# [^\W\d_] is any letter. Notes are NFC text, so accented letters are single characters.
_UP = "[" + "".join(re.escape(chr(c)) for c in range(0x2000) if chr(c).isupper()) + "]"
_LETTER = r"[^\W\d_]"
# O'Brien, Smith-Jones, Müller, Nguyễn, Ó Briain's "Ó"; not Smith's
_TOKEN = rf"{_UP}{_LETTER}*(?:['’](?!s\b){_LETTER}+)?(?:-{_UP}{_LETTER}*)?"
_INITIAL = rf"{_UP}\."
_IS_INITIAL = re.compile(_INITIAL).fullmatch
_NAME_SEQ = rf"(?:{_INITIAL}|{_TOKEN})(?:\s+(?:{_INITIAL}|{_TOKEN})){{0,3}}"

_HONORIFIC = re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|Miss|Mister|Doctor|Sir|Madam)\.?\s+(?P<v>{_NAME_SEQ})")
_TRIGGER = re.compile(
    r"(?i:\b(?P<t>patient(?:'s)?\s+name|name|named|patient|pt|son|daughter|wife|husband|mother|father|brother|sister"
    r"|spouse|partner|guardian|caregiver|grandson|granddaughter|grandmother|grandfather|aunt|uncle|niece|nephew"
    r"|friend|neighbou?r|seen\s+by|referred\s+by|signed\s+by|reviewed\s+by|dictated\s+by|attending|contact"
    r"|emergency\s+contact|next\s+of\s+kin|nok|cc|surgeon|physician|provider|pcp|nurse|resident|fellow"
    r"|accompanied\s+by|visited\s+by|spoke\s+with|called|c/o|care\s+of|mrs|mr|ms))"
    r"\b\s*(?P<sep>:|,|=|is|was)?\s*(?P<v>" + _NAME_SEQ + ")"
)
# triggers that label a name outright: any non-common capitalised token after them is taken as a name
_STRONG_TRIGGERS = re.compile(
    r"(?i)^(?:patient(?:'s)?\s+name|name|named|signed\s+by|reviewed\s+by|dictated\s+by|next\s+of\s+kin|nok|cc"
    r"|c/o|care\s+of|mrs|mr|ms)$"
)
_CREDENTIAL = re.compile(
    rf"(?P<v>{_NAME_SEQ}),?\s+(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PA|PhD|DNP|CNM|CRNA|LPN|MBBS|FRCP|DDS|PharmD)\b"
)
# a sign-off by initials at the end of a line ("Refill sent. - A.D.", "-- J.K.L.")
_SIGNED_INITIALS = re.compile(rf"(?:^|(?<=\s))[-–—~]{{1,2}}\s?(?P<v>{_INITIAL}(?:\s?{_INITIAL}){{1,2}})[ \t]*$", re.M)
# "First L. (RN)", "Line J. (NP, BSN)": a word, an initial and a bracketed credential name a clinician, even when
# the word is also a common one
_PAREN_CREDENTIAL = re.compile(
    rf"(?P<v>{_TOKEN})\s+{_INITIAL}\s*\((?:RN|NP|LPN|MD|DO|PA|PA-C|CNA|BSN|MSN|APRN|CRNA|CNM|DNP|PhD|PharmD)\b"
)
# after a labelled name ("Pt: Lu, Jun, bed 24A"), "Surname, Given" with a given name of the lexicon, common or not
_LABELLED_GIVEN = re.compile(rf",\s+(?P<g>{_TOKEN})\b(?!\s*\d)")
_LAST_FIRST = re.compile(rf"\b(?P<last>{_TOKEN}),\s+(?P<first>{_TOKEN})\b")
_WORD = re.compile(rf"\b{_TOKEN}\b")
_INITIAL_SURNAME = re.compile(
    rf"(?<![\w./])(?P<i>{_UP}\.?)\s?(?P<v>{_TOKEN})\b"
)  # not "mmol/L. Foley"  # "J. Smith", "J Smith"
# lower-case notes ("pt john smith called"): lexicon tokens after a trigger or before a credential, and lexicon pairs
# letters of any script (std re: [^\W\d_]); the rules keep only matches that are lower case
_LOWER_TOKEN = r"[^\W\d_]+(?:['’][^\W\d_]+)?(?:-[^\W\d_]+)?"
_LOWER_TRIGGER = re.compile(
    r"\b(?:(?:dr|mr|mrs|ms|mx|prof)\b\.?|(?:miss|doctor|patient(?:'s)?\s+name|name|named|patient|pt|son|daughter"
    r"|wife|husband|mother|father|brother|sister|spouse|partner|guardian|caregiver|niece|nephew|grandson"
    r"|granddaughter|grandmother|grandfather|aunt|uncle|cousin|mom|dad|friend|neighbou?r|seen\s+by|referred\s+by"
    r"|signed\s+by|reviewed\s+by|dictated\s+by|contact|next\s+of\s+kin|spoke\s+with|accompanied\s+by"
    r"|visited\s+by)\b)"
    rf"\s*(?::|,|=)?\s*(?P<v>{_LOWER_TOKEN}(?:\s+(?:{_LOWER_TOKEN}|[a-z]\.)){{0,2}})"
)
_LOWER_CREDENTIAL = re.compile(rf"(?P<v>{_LOWER_TOKEN}(?:\s+{_LOWER_TOKEN}){{0,2}}),?\s+(?:md|m\.d\.|rn|np|phd)\b")
_LOWER_CREDENTIAL_WORD = re.compile(r"\b(?:md|m\.d\.|rn|np|phd)\b")  # cheap test before the costly rule
_VERB_FORM = re.compile(r"[^\W\d_]{3,}(?:ed|ing)").fullmatch
_LOWER_LAST_FIRST = re.compile(rf"\b(?P<s>{_LOWER_TOKEN}),\s+(?P<g>{_LOWER_TOKEN})\b")
_LOWER_PAIR = re.compile(rf"\b(?P<g>{_LOWER_TOKEN})\s+(?:[a-z]\.?\s+)?(?P<s>{_LOWER_TOKEN})\b")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Capitalised words that must not be taken as names even after a trigger: common English function words,
# clinical section headings and terms that start sentences. Lower-cased.
_COMMON = _words(
    """
a an the and or but if then than that this these those there here he she they we you i it its his her their our
my your me him them us who whom whose which what when where why how is was were be been being are am has have had
do does did not no yes on in at to of for from by with without about after before during since until while as
into onto over under again also very more most less least much many some any all each every both either neither
other another such same new old first second third last next today tonight tomorrow yesterday now later
patient patients pt name names son daughter wife husband mother father family contact called care unknown none
history assessment plan diagnosis diagnoses impression subjective objective exam examination findings results
medications medication allergies allergy procedure procedures labs lab vitals vital signs chief complaint hpi ros
admission admitted discharge discharged follow followup follow-up return instructions note notes report summary
clinic hospital center centre department unit ward room floor service team medical medicine surgery surgical
emergency urgent primary care nursing pharmacy radiology cardiology oncology neurology pediatrics psychiatry
denies denied reports reported states stated presents presented complains complained notes noted has had was is
will may might can could should would must shall please thank thanks hello hi dear regards sincerely
mg ml kg cm mm bp hr rr spo2 temp iv po prn bid tid qid qd daily weekly monthly
monday tuesday wednesday thursday friday saturday sunday january february march april may june july august
september october november december jan feb mar apr jun jul aug sep sept oct nov dec
type diabetes hypertension asthma copd cancer covid influenza pneumonia sepsis stroke
male female man woman boy girl adult child infant baby
mr mrs ms dr doctor nurse provider physician surgeon resident attending
street st avenue ave road rd drive dr lane ln boulevard blvd court ct suite apt
yes no ok okay normal abnormal negative positive stable unstable acute chronic mild moderate severe
left right bilateral upper lower anterior posterior
seen evaluated examined treated tolerating tolerated taking takes took started stopped given found feels feeling
doing well better worse improved improving endorses refused declined agrees understands lives living walks walking
arrived came went returned remains remained continues continued appears appeared looks looked says said tells told
alert oriented awake asleep comfortable ambulating ambulatory afebrile stable presenting
education practitioner therapy physical internal triage protocol provided verified notified precautions present
services social work worker management health mental behavioral occupational speech respiratory infectious
disease diseases intensive critical general practice assistant aide technician coordinator manager director
administration nutrition dietitian chaplain interpreter transport security registration billing insurance
visit visits consult consults consultation driver pump recs review reviewed portal callback login
email e-mail phone telephone tel fax cell mobile pager address zip code postcode postal
minute minutes hour hours day days week weeks month months year years
come go take see call keep stop avoid use get make give bring drink eat walk sleep wash change check watch seek
"""
)

COMMON_WORDS = _COMMON

# Census given names that are also ordinary words; they count as names only by rules 1-4.
_AMBIGUOUS_GIVEN = _words(
    """
may june april august summer autumn dawn eve will hope faith joy grace charity mercy patience prudence
honor honour rose iris ivy lily daisy violet ruby pearl jade amber crystal sunny sky rain storm
mark bill art pat sue don guy chase lane wade dale glen rich bob jack ray max rod mike jean gene
page major royal king prince earl duke baron judge bishop dean miles frank sterling cash price
star angel precious destiny tempest chance sonny christian buck carol carrie gay harmony heaven
lucky misty penny sandy shelby sherry skip tuesday holly berry china virginia georgia carolina
florida dakota austin houston jackson lincoln madison washington paris london india asia africa
young white black green brown gray grey long short little small case ward hall wall field hill
"""
)


@lru_cache(maxsize=1)
def _lexicon() -> tuple[frozenset[str], frozenset[str]]:
    """(given names, surnames), upper case, from the bundled multi-locale lexicon; names that are also common English
    words ("Will", "Long", "Care") are left to the context rules and the tagger."""
    lex = lexicon()
    return lex.given - lex.common, lex.surnames - lex.common


def _key(token: str) -> str:
    """Lexicon key: upper case without apostrophes (the census spells O'Brien as OBRIEN)."""
    return token.strip().upper().replace("'", "").replace("’", "")


def _tokens(span: str) -> list[str]:
    return [t for t in re.split(r"\s+", span) if t]


def _strip_common(tokens: list[str]) -> list[str]:
    """Keep the leading run of tokens that could be name parts (stop at a common word)."""
    kept: list[str] = []
    for tok in tokens:
        if tok.rstrip(".").lower() in _COMMON and not _IS_INITIAL(tok):
            break
        kept.append(tok)
    while kept and _IS_INITIAL(kept[-1]) and len(kept) > 1:
        kept.pop()  # a trailing initial is more likely a sentence end ("... by Dr. Smith. A")
    return kept


def _drop_leading_acronym(tokens: list[str], surnames: frozenset[str]) -> list[str]:
    """No name after a trigger when the first token is a 2-3 letter acronym in capitals that no surname list holds
    ("Pt: SOB", "Contact: ICU"); "Pt: LEE, John" and "NG, Thi" keep theirs."""
    if tokens and tokens[0].isupper() and 2 <= len(tokens[0]) <= 3 and _key(tokens[0]) not in surnames:
        return []
    return tokens


def _lexicon_run(
    tokens: list[str], given: frozenset[str], surnames: frozenset[str], *, first_free: bool = False
) -> list[str]:
    """The leading run of tokens that are lexicon names or initials (``first_free``: the first token need only
    be a non-common word, as after an honorific: "DR. IVANOVA")."""
    run: list[str] = []
    for i, tok in enumerate(tokens):
        known = _IS_INITIAL(tok) or _key(tok) in given or _key(tok) in surnames
        known = known or (first_free and i == 0 and tok.lower() not in _COMMON)
        # a surname the lexicon lacks, right after a given name or initial ("PATIENT: MEI IVANOVA")
        follows_given = bool(run) and (_key(run[-1]) in given or _IS_INITIAL(run[-1]) is not None)
        if not (known or (follows_given and tok.lower() not in _COMMON)):
            break
        run.append(tok)
    return run


def _lower_case_names(
    text: str,
    given: frozenset[str],
    surnames: frozenset[str],
    add_tokens: Callable[[int, str, list[str]], None],
    pairs: bool,
) -> None:
    """Rules for names written in lower case: stricter, since every word is lower case there."""

    def is_name(tok: str) -> bool:
        low = tok.lower()
        return (_key(tok) in given or _key(tok) in surnames) and low not in _COMMON and low not in _AMBIGUOUS_GIVEN

    def in_lexicon(tok: str) -> bool:
        return (_key(tok) in given or _key(tok) in surnames) and tok.lower() not in _COMMON

    has_credential = _LOWER_CREDENTIAL_WORD.search(text) is not None
    for pattern in (_LOWER_TRIGGER, _LOWER_CREDENTIAL) if has_credential else (_LOWER_TRIGGER,):
        for m in pattern.finditer(text):
            value = m.group("v")
            tokens = _tokens(value)
            run: list[str] = []
            if pattern is _LOWER_CREDENTIAL:
                # next to ", md" the last token is a name part even outside the lexicon ("betty ivanova, md")
                tokens = tokens[::-1]
                for i, tok in enumerate(tokens):
                    if not tok.islower() or not (in_lexicon(tok) or (i == 0 and tok.lower() not in _COMMON)):
                        break
                    run.append(tok)
            else:
                # "my sister mark": after "my" and a relation word a lexicon name counts even when ambiguous
                mine = text[max(0, m.start() - 3) : m.start()] == "my "
                for i, tok in enumerate(tokens):
                    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
                    after_given = bool(run) and _key(run[-1]) in given
                    ok = tok.islower() and (
                        is_name(tok)
                        or (i == 0 and mine and in_lexicon(tok) and len(tok) > 2)
                        # an ambiguous given name ("carol") counts when a lexicon surname follows it
                        or (i == 0 and _key(tok) in given and _key(nxt) in surnames and nxt.lower() not in _COMMON)
                        or (i > 0 and in_lexicon(tok))
                        # an unknown surname after a given name, not a verb form ("irma picked up", "ana taking")
                        or (after_given and tok.lower() not in _COMMON and len(tok) > 2 and not _VERB_FORM(tok))
                    )
                    if i == 1 and mine and not is_name(tokens[0]):  # "my sister mark picked": one word only,
                        ok = ok and _key(tok) in surnames and tok.lower() not in _COMMON  # unless a surname follows
                    if not ok:
                        break
                    run.append(tok)
            if pattern is _LOWER_CREDENTIAL:
                run = run[::-1]
                offset = value.rfind(run[0]) if run else 0
                add_tokens(m.start("v") + offset, value[offset:], run)
            else:
                add_tokens(m.start("v"), value, run)
    for pattern in (_LOWER_PAIR, _LOWER_LAST_FIRST) if pairs else ():
        for m in pattern.finditer(text):
            g, sname = m.group("g"), m.group("s")
            lexical = len(g) > 2 and len(sname) > 2 and _key(g) in given and _key(sname) in surnames
            lexical = lexical and g.islower() and sname.islower()
            if lexical and is_name(g) and sname.lower() not in _COMMON and sname.lower() not in _AMBIGUOUS_GIVEN:
                add_tokens(m.start("g"), g, [g])
                add_tokens(m.start("s"), sname, [sname])


def find_names(
    text: str, known: Iterable[str] = (), *, lexicon_only: bool = False, lower_pairs: bool = True
) -> tuple[list[tuple[int, int]], set[str]]:
    """Character spans of person names in ``text`` (may overlap) and the name tokens found.

    ``known`` are tokens already found elsewhere in the same record; they are replaced here too (rule 6).
    ``lexicon_only`` (for text that was ALL CAPS, where every word looks capitalised): rules 1-3 accept only
    tokens that are in the lexicon. ``lower_pairs``: also take two lower-case lexicon words in a row as a name (for
    all-lower-case text; in mixed case the tagger reads such pairs, and the rule is the costliest one).
    """
    given, surnames = _lexicon()
    spans: list[tuple[int, int]] = []
    found_tokens: set[str] = set()
    propagate: set[str] = set(known)

    def add_tokens(start: int, span_text: str, tokens: list[str]) -> None:
        pos = 0
        for tok in tokens:
            idx = span_text.find(tok, pos)
            if idx < 0:
                break
            spans.append((start + idx, start + idx + len(tok)))
            pos = idx + len(tok)
            if not _IS_INITIAL(tok) and len(tok) > 1:
                found_tokens.add(tok)

    for pattern in (_HONORIFIC, _TRIGGER, _CREDENTIAL):
        for m in pattern.finditer(text):
            if pattern is _TRIGGER and not lexicon_only and m.group("t") == "CC":
                continue  # "CC: SOB" in mixed case is the chief complaint; a copy list is written "cc:" or "Cc:"
            value = m.group("v")
            tokens = _tokens(value)
            if pattern is _CREDENTIAL:
                # keep the trailing run of name-like tokens ("... by Jane Smith, MD" -> Jane Smith)
                tail: list[str] = []
                for tok in reversed(tokens):
                    # a credential is not a name ("[NAME], MD\nRN license": MD is not RN's name)
                    if tok.rstrip(".").lower() in _COMMON or tok.lower() in _TITLES:
                        break
                    tail.insert(0, tok)
                tokens = tail[-3:]
                if lexicon_only:
                    tokens = [t for t in tokens if _key(t) in given or _key(t) in surnames]
                offset = value.rfind(tokens[0]) if tokens else 0
                add_tokens(m.start("v") + offset, value[offset:], tokens)
                continue
            tokens = _strip_common(tokens)
            if pattern is _TRIGGER and not lexicon_only:
                tokens = _drop_leading_acronym(tokens, surnames)
            if lexicon_only:
                tokens = _lexicon_run(tokens, given, surnames, first_free=pattern is _HONORIFIC)
            elif pattern is _TRIGGER and tokens and not _STRONG_TRIGGERS.match(m.group("t")):
                # a weak trigger ("patient", "son", "nurse") without ":" or ",": the first token must be a lexicon
                # name, or two name-like tokens must follow ("Patient Zyntharia Quellbrook", not "Contact Dermatitis")
                labelled = m.group("sep") in (":", ",", "=")
                in_lexicon = _key(tokens[0]) in given or _key(tokens[0]) in surnames
                name_words = [t for t in tokens if not _IS_INITIAL(t)]
                if not (labelled or in_lexicon or len(name_words) >= 2):
                    tokens = []
            if tokens and len(tokens[0]) >= 2:
                add_tokens(m.start("v"), value, tokens)
                named = pattern is _TRIGGER and (m.group("sep") == ":" or bool(_STRONG_TRIGGERS.match(m.group("t"))))
                given_after = _LABELLED_GIVEN.match(text, m.end("v")) if named and len(tokens) == 1 else None
                if given_after and _key(given_after.group("g")) in given and not given_after.group("g").isupper():
                    add_tokens(given_after.start("g"), given_after.group("g"), [given_after.group("g")])

    if "." in text:
        for m in _SIGNED_INITIALS.finditer(text):
            spans.append(m.span("v"))
        if "(" in text:
            for m in _PAREN_CREDENTIAL.finditer(text):
                word = m.group("v")
                if len(word) > 1 and word.lower() not in _TITLES and (not lexicon_only or _key(word) in given):
                    add_tokens(m.start("v"), word, [word])

    for m in _LAST_FIRST.finditer(text):
        last, first = m.group("last"), m.group("first")
        if last.isupper() and first.isupper() and len(first) > 2 and len(last) > 2:
            # an ALL-CAPS header "KOWALCZYK, ANNA": a lexicon given name after the comma makes both names
            if _key(first) in given and last.lower() not in _COMMON and first.lower() not in _COMMON:
                add_tokens(m.start("last"), last, [last])
                add_tokens(m.start("first"), first, [first])
            continue
        if last.isupper() or first.isupper() or _key(first) not in given:
            continue
        # "Surname, Given": a known surname, or any non-common word before an unambiguous given name
        lexical = _key(last) in surnames or first.lower() not in _AMBIGUOUS_GIVEN
        if lexical and last.lower() not in _COMMON and first.lower() not in _COMMON:
            add_tokens(m.start("last"), last, [last])
            add_tokens(m.start("first"), first, [first])

    for m in _INITIAL_SURNAME.finditer(text):
        surname = m.group("v")
        if _key(surname) in surnames and surname.lower() not in _COMMON and not surname.isupper():
            spans.append((m.start("i"), m.start("i") + len(m.group("i"))))
            add_tokens(m.start("v"), surname, [surname])

    if not lexicon_only:
        _lower_case_names(text, given, surnames, add_tokens, lower_pairs)

    words = list(_WORD.finditer(text))
    for i, m in enumerate(words):
        tok = m.group(0)
        low = tok.lower()
        if low in _COMMON or tok.isupper():  # all-caps tokens are acronyms (MA, ER, ICU), not lexicon names
            continue
        up = _key(tok)
        if up in given and i + 1 < len(words):
            j = i + 1
            between = text[m.end() : words[j].start()]
            if re.fullmatch(r"\s+[A-Z]\.\s+", between) or re.fullmatch(r"\s+", between):
                nxt = words[j].group(0)
                plausible = _key(nxt) in surnames or (not lexicon_only and low not in _AMBIGUOUS_GIVEN)
                if plausible and nxt.lower() not in _COMMON and not nxt.isupper():
                    add_tokens(m.start(), tok, [tok])
                    add_tokens(words[j].start(), nxt, [nxt])
                    continue
        if up in given and low not in _AMBIGUOUS_GIVEN and len(tok) > 2:
            add_tokens(m.start(), tok, [tok])

    propagate |= found_tokens
    spans.extend(propagate_spans(text, propagate))
    return spans, found_tokens


# honorifics and credentials that a name field may carry ("Dr. Jane Roe, MD"): not name tokens
_TITLES = _words(
    "dr mr mrs ms mx prof miss mister doctor sir madam md do rn np pa phd dnp cnm crna lpn mbbs frcp dds pharmd"
)


def labelled_name_tokens(value: str) -> set[str]:
    """The tokens of a value that a field says is a name ({"patient_name": "Ysolde Vantaggio"}), to propagate."""
    words = re.findall(r"[^\W\d_]+(?:['’][^\W\d_]+)?(?:-[^\W\d_]+)?", value)
    return {w for w in words if len(w) > 1 and w.lower() not in _COMMON and w.lower() not in _TITLES}


def propagate_spans(text: str, tokens: Iterable[str]) -> list[tuple[int, int]]:
    """Every standalone occurrence of the given name tokens in ``text``, in any letter case (rule 6): not inside a
    longer word or hyphenated word ("Smith" is not found in "Smithson" or "Smith-Jones")."""
    wanted = {t.lower() for t in tokens if t}
    if not wanted:
        return []
    low = text.lower()
    if len(low) != len(text):  # a letter whose lower case is longer (rare): search case by case instead
        alternation = "|".join(re.escape(t) for t in sorted(wanted, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w-])(?:{alternation})(?![\w-])", re.IGNORECASE)
        return [(m.start(), m.end()) for m in pattern.finditer(text)]
    spans: list[tuple[int, int]] = []
    n = len(low)
    for tok in wanted:
        pos = low.find(tok)
        while pos >= 0:
            end = pos + len(tok)
            before = low[pos - 1] if pos else " "
            after = low[end] if end < n else " "
            if not (before.isalnum() or before in "_-") and not (after.isalnum() or after in "_-"):
                spans.append((pos, end))
            pos = low.find(tok, pos + 1)
    spans.sort()
    return spans

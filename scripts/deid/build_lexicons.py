"""Build the multi-locale name lexicon shipped in appliance/intake/data/names.tsv.gz from Faker's person providers.

Faker (MIT licence) carries given and family names for dozens of locales. This script reads every locale's
``first_names``/``last_names`` (Latin-script locales as they are, Chinese and Japanese through Faker's romanised
lists, Cyrillic ones through a fixed transliteration), merges the bundled 1990 US Census lists, marks tokens that are
also common English words (Faker's en_US lorem word list) and writes one gzip TSV: ``token<TAB>flags<TAB>locales``
with flags ``g`` (given), ``s`` (surname), ``p`` (particle such as van/de/la), ``c`` (common English word).
Deterministic: sorted output, fixed gzip mtime. Run: ``.venv/bin/python scripts/deid/build_lexicons.py``.
"""

from __future__ import annotations

import gzip
import importlib
import pkgutil
import sys
from collections import defaultdict
from pathlib import Path

import faker
import faker.providers.person as person
import regex

from appliance.intake._tagger._notes import translit  # one transliteration table for lexicon and notes

DATA = Path(__file__).resolve().parents[2] / "appliance" / "intake" / "data"
_LATIN = regex.compile(r"^[\p{Latin}\p{M}'’ .-]+$")
_WORD = regex.compile(r"\p{L}[\p{L}\p{M}]*(?:['’]\p{L}[\p{L}\p{M}]*)*")


def names_of(provider: type, attrs: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    for attr in attrs:
        value = getattr(provider, attr, None)
        if isinstance(value, dict):
            found.extend(str(k) for k in value)
        elif isinstance(value, list | tuple):
            found.extend(str(v) for v in value)
    return found


def main() -> int:
    given: dict[str, set[str]] = defaultdict(set)
    surname: dict[str, set[str]] = defaultdict(set)
    particles: set[str] = set()
    for mod in pkgutil.iter_modules(person.__path__):
        locale = mod.name
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        firsts = names_of(provider, ("first_romanized_names",)) or names_of(
            provider, ("first_names", "first_names_male", "first_names_female")
        )
        lasts = names_of(provider, ("last_romanized_names",)) or names_of(
            provider, ("last_names", "last_names_male", "last_names_female")
        )
        for bucket, names in ((given, firsts), (surname, lasts)):
            for name in names:
                name = translit(name)
                if not _LATIN.match(name):
                    continue  # other scripts: notes here are written in Latin letters
                for word in _WORD.findall(name):
                    if word[0].islower() and len(word) <= 4:  # van, de, la, da, 's, tSithigh stays
                        particles.add(word.lower())
                    elif len(word) > 1:
                        bucket[word.upper()].add(locale)
    for file, bucket in (("first_names.txt", given), ("first_names_extra.txt", given), ("surnames.txt", surname)):
        for line in (DATA / file).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("#"):
                bucket[line.strip().upper()].add("census")
    from faker.providers.lorem.en_US import Provider as Lorem

    common = {w.upper() for w in Lorem.word_list}
    rows = []
    for token in sorted(set(given) | set(surname)):
        flags = ("g" if token in given else "") + ("s" if token in surname else "")
        flags += ("p" if token.lower() in particles else "") + ("c" if token in common else "")
        locales = len(given.get(token, set()) | surname.get(token, set()))
        rows.append(f"{token}\t{flags}\t{locales}")
    rows.extend(f"{p.upper()}\tp\t0" for p in sorted(particles) if p.upper() not in given and p.upper() not in surname)
    rows.sort()
    header = f"# Faker {faker.VERSION} person providers (MIT) + 1990 US Census (public domain); see LICENSE-names.md"
    body = "\n".join([header, *rows]) + "\n"
    out = DATA / "names.tsv.gz"
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(body.encode("utf-8"))
    print(
        f"{out}: {len(rows)} tokens, {sum('g' in r.split(chr(9))[1] for r in rows)} given, "
        f"{sum('s' in r.split(chr(9))[1] for r in rows)} surnames, {len(particles)} particles"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

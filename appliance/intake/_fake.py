"""Fake identifiers for the synthetic records and the recall cases: one generator per placeholder type.

Every value is invented: names are common census names (and a few invented ones) combined at random, numbers are
random digits, phone numbers use the 555-01xx fiction range, domains are ``example.*``.
"""

from __future__ import annotations

import random
import string

__all__ = ["CITIES", "FIRST", "LAST", "MONTHS", "RARE_FIRST", "RARE_LAST", "STREETS", "SUFFIXES", "Fake"]


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


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _upper_alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))


class Fake:
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

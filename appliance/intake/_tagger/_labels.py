"""A labelled note and the writer that builds one: every identifier's span is recorded as its text is written."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Note", "Phi", "Writer"]


@dataclass(frozen=True)
class Phi:
    """One identifier in a note: where it is, its placeholder type and (names) the person's role."""

    start: int
    end: int
    kind: str
    role: str = ""


@dataclass
class Note:
    """A generated note with its labelled identifiers and the clinical phrases that must survive scrubbing."""

    text: str
    kind: str
    phi: list[Phi] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)

    def value(self, phi: Phi) -> str:
        return self.text[phi.start : phi.end]


class Writer:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.phi: list[Phi] = []
        self.keep: list[str] = []

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.pos += len(s)

    def mark(self, s: str, kind: str, role: str = "") -> None:
        if s:
            self.phi.append(Phi(self.pos, self.pos + len(s), kind, role))
        self.text(s)

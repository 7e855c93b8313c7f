"""Render docs/compliance/hipaa.md and gdpr.md from controls.yaml (run after changing a control).

tests/foundation/test_controls.py fails when the rendered files differ from what is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPLIANCE = ROOT / "docs" / "compliance"

INTRO = {
    "HIPAA": (
        "# HIPAA Security Rule mapping (45 CFR 164.312 and related)\n\n"
        "Generated from `controls.yaml` by `scripts/compliance_docs.py`; edit the YAML, not this file.\n"
        "Each row names the mechanism, the code that implements it and the test that proves it.\n"
    ),
    "GDPR": (
        "# GDPR mapping\n\n"
        "Generated from `controls.yaml` by `scripts/compliance_docs.py`; edit the YAML, not this file.\n"
        "Each row names the mechanism, the code that implements it and the test that proves it.\n"
    ),
}
OUT_OF_SCOPE = {
    "HIPAA": (
        "\n## What the hospital still owns\n"
        "Risk analysis and management (164.308(a)(1)), workforce training and sanctions, business associate "
        "agreements, contingency plans and facility controls (164.310) are organisational duties; the appliance "
        "supplies the evidence (audit exports, approvals, provenance) but cannot discharge them.\n"
    ),
    "GDPR": (
        "\n## What the controller still owns\n"
        "The lawful basis (Art. 6/9), the DPIA (Art. 35), informing data subjects (Art. 13/14) and deciding on "
        "erasure requests are the controller's; `appliance erasure plan` gives the facts each decision needs.\n"
    ),
}


def render(framework: str, controls: list[dict[str, object]]) -> str:
    lines = [
        INTRO[framework],
        "\n| control | clause | what it guarantees | mechanism | code | proven by |\n",
        "|---|---|---|---|---|---|\n",
    ]
    internal = [c for c in controls if c["framework"] == "internal"]
    for c in [c for c in controls if c["framework"] == framework] + internal:
        code = "<br>".join(f"`{p}`" for p in c["code"])  # type: ignore[attr-defined]
        tests = "<br>".join(f"`{t}`" for t in c["tests"])  # type: ignore[attr-defined]
        mechanism = " ".join(str(c["mechanism"]).split())
        lines.append(f"| {c['id']} | {c['reference']} | {c.get('title', '')} | {mechanism} | {code} | {tests} |\n")
    lines.append(OUT_OF_SCOPE[framework])
    return "".join(lines)


def rendered() -> dict[Path, str]:
    controls = yaml.safe_load((COMPLIANCE / "controls.yaml").read_text(encoding="utf-8"))["controls"]
    return {COMPLIANCE / f"{fw.lower()}.md": render(fw, controls) for fw in ("HIPAA", "GDPR")}


if __name__ == "__main__":
    for path, text in rendered().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)

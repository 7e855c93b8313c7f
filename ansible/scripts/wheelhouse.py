#!/usr/bin/env python3
"""Build the offline wheelhouse the appliance role installs from (`appliance_wheelhouse`).

Run it on a connected machine (an operator's workstation, CI) with any Python 3.11+ that has pip. It downloads
binary wheels of the appliance's runtime dependencies (`[project] dependencies` of pyproject.toml) for the target
hosts (CPython 3.11, glibc 2.36, x86_64: Debian 12) into OUT, so that the role can install with
`pip install --no-index --find-links`. The appliance's own wheel is not in it (`pip wheel --no-deps .`).

pip evaluates environment markers against the Python that runs it, not the target's: requirements that only the
target's Python needs (e.g. `async-timeout; python_full_version < "3.11.3"` of redis, for Debian 12's 3.11.2) are
found by reading every downloaded wheel's metadata with the target's version and downloaded as well.

torch comes first, alone and pinned. By default it must be a CPU build (a local version `+cpu`, e.g. from a
find-links directory holding torch-2.13.0+cpu): pip would otherwise take PyPI's CUDA build of the same version and
several GB of nvidia-* wheels. GPU sites that want the CUDA build say so with `--cuda-torch`.

    python3 ansible/scripts/wheelhouse.py --out ansible/files/wheelhouse     # or: make wheelhouse

The result is written next to OUT and renamed into place when complete (a failed run leaves no partial OUT);
OUT/SHA256SUMS lists every wheel.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from email.parser import HeaderParser
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[2]
# Wheels that only a CUDA build of torch pulls in.
CUDA_ONLY = re.compile(r"^(nvidia_|triton-|cuda_)", re.IGNORECASE)


def dependencies(pyproject: Path) -> list[str]:
    """The runtime requirements of the project (no extras)."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [str(r) for r in project["dependencies"]]


def target_args(python_version: str, glibc: str, arch: str) -> list[str]:
    """pip's target selection: CPython ABI and every manylinux tag a host with this glibc accepts."""
    major, minor = (int(p) for p in glibc.split("."))
    platforms = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    platforms.append(f"manylinux2014_{arch}")  # pip expands it to manylinux2010 and manylinux1
    abi = "cp" + python_version.replace(".", "")
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python_version, "--abi", abi]
    args += ["--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def pip_download(dest: Path, target: list[str], *args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar", "off", "-q"]
    subprocess.run([*cmd, "--dest", str(dest), *target, *args], check=True)


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """The Requires-Dist entries of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        metadata = HeaderParser().parsestr(zf.read(name).decode("utf-8"))
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def missing_for_target(work: Path, python_full_version: str) -> list[str]:
    """Requirements the wheels in WORK have on the target's Python that no wheel there provides (no extras)."""
    env = {
        **default_environment(),
        "python_full_version": python_full_version,
        "python_version": ".".join(python_full_version.split(".")[:2]),
        "implementation_name": "cpython",
        "implementation_version": python_full_version,
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "extra": "",
    }
    wheels = sorted(work.glob("*.whl"))
    present = {canonicalize_name(w.name.split("-")[0]) for w in wheels}
    missing = []
    for wheel in wheels:
        for req in wheel_requirements(wheel):
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if canonicalize_name(req.name) not in present:
                req.marker = None
                missing.append(str(req))
    return sorted(set(missing))


def build(
    out: Path,
    pyproject: Path,
    python_full_version: str,
    glibc: str,
    arch: str,
    cuda_torch: bool,
) -> Path:
    python_version = ".".join(python_full_version.split(".")[:2])
    requirements = dependencies(pyproject)
    torch = [r for r in requirements if re.match(r"^torch\s*[=<>~!]", r)]
    rest = [r for r in requirements if r not in torch]
    target = target_args(python_version, glibc, arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        constraints = work / ".constraints.txt"
        if torch:
            # torch alone first, without its dependencies, so a CUDA build is refused before anything is fetched.
            pip_download(work, target, "--no-deps", *torch)
            wheels = sorted(work.glob("torch-*.whl"))
            if len(wheels) != 1:
                raise SystemExit(f"expected one torch wheel, got {[w.name for w in wheels]}")
            version = wheels[0].name.split("-")[1]
            if not cuda_torch and not version.endswith("+cpu"):
                raise SystemExit(
                    f"{wheels[0].name} is not a CPU build of torch: put torch-{version}+cpu into a --find-links "
                    "directory of pip's configuration, or pass --cuda-torch on a GPU site"
                )
            # The rest resolves against exactly this torch (the +cpu local version satisfies torch==X).
            constraints.write_text(f"torch=={version}\n")
        else:
            constraints.write_text("")
        pip_download(work, target, "--find-links", str(work), "-c", str(constraints), *rest, *torch)
        for _ in range(10):
            missing = missing_for_target(work, python_full_version)
            if not missing:
                break
            pip_download(work, target, "--find-links", str(work), "-c", str(constraints), *missing)
        else:
            raise SystemExit(f"requirements of the target's Python still missing: {missing}")
        constraints.unlink()
        names = sorted(p.name for p in work.iterdir())
        not_wheels = [n for n in names if not n.endswith(".whl")]
        if not_wheels:
            raise SystemExit(f"not wheels: {not_wheels}")
        cuda = [n for n in names if CUDA_ONLY.match(n)]
        if cuda and not cuda_torch:
            raise SystemExit(f"CUDA wheels pulled in: {cuda}")
        lines = []
        for name in names:
            digest = hashlib.sha256((work / name).read_bytes()).hexdigest()
            lines.append(f"{digest}  {name}\n")
        (work / "SHA256SUMS").write_text("".join(lines))
        for path in work.iterdir():
            path.chmod(0o644)
        work.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="The wheelhouse directory to write (replaced).")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    parser.add_argument(
        "--python-version", default="3.11.2", help="The target hosts' Python, in full (Debian 12: 3.11.2)."
    )
    parser.add_argument("--glibc", default="2.36", help="The target hosts' glibc (Debian 12: 2.36).")
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--cuda-torch", action="store_true", help="Accept a CUDA build of torch (GPU sites).")
    args = parser.parse_args()
    path = build(args.out, args.pyproject, args.python_version, args.glibc, args.arch, args.cuda_torch)
    wheels = list(path.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels)
    print(f"{path}: {len(wheels)} wheels, {size / 1e6:.0f} MB")


if __name__ == "__main__":
    main()

"""Render roles' templates with ansible-playbook, touching no host: the one way the provisioning tests do it.

A render play runs the roles for their defaults and vars (their tasks are skipped: ``--tags render``) and then
template tasks that write each file under a test directory. Plays are built as data and written as YAML, so a
Jinja expression (``{{ inventory_hostname }}``) is a plain string here.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.ansible.conftest import ANSIBLE_DIR, BIN, ansible_env

__all__ = ["HOST", "ROLES", "appliance_env", "appliance_toml", "play", "render", "template"]

ROLES = ANSIBLE_DIR / "roles"
HOST = "{{ inventory_hostname }}"  # a file per host: f"{out}/{HOST}.toml"


def template(
    name: str,
    src: str,
    dest: str,
    *,
    mode: str = "0600",
    no_log: bool = False,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task that renders the role template ``src`` (relative to ansible/roles) to ``dest``, tagged render;
    ``no_log`` for a file that holds a secret."""
    task: dict[str, Any] = {
        "name": name,
        "ansible.builtin.template": {"src": str(ROLES / src), "dest": dest, "mode": mode},
    }
    if no_log:
        task["no_log"] = True
    if variables:
        task["vars"] = dict(variables)
    task["tags"] = ["render"]
    return task


def appliance_toml(out: Path | str, stem: str = HOST) -> dict[str, Any]:
    """The appliance role's settings, as ``<out>/<stem>.toml``."""
    return template("Render the appliance's settings", "appliance/templates/appliance.toml.j2", f"{out}/{stem}.toml")


def appliance_env(out: Path | str, stem: str = HOST) -> dict[str, Any]:
    """The appliance role's secrets file, as ``<out>/<stem>.env`` (not logged)."""
    return template(
        "Render the appliance's secrets file", "appliance/templates/appliance.env.j2", f"{out}/{stem}.env", no_log=True
    )


def play(name: str, hosts: str, roles: Sequence[str], tasks: Sequence[Mapping[str, Any]]) -> str:
    """A render play as YAML: the roles' variables for ``hosts`` (over a local connection), then ``tasks``."""
    body = {
        "name": name,
        "hosts": hosts,
        "connection": "local",
        "gather_facts": False,
        "roles": list(roles),
        "post_tasks": [dict(t) for t in tasks],
    }
    return yaml.safe_dump([body], sort_keys=False, width=1000)


def render(
    inventory: str,
    play_yaml: str,
    work: Path,
    *,
    extra: Mapping[str, object] | None = None,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook --tags render on the play, which must succeed (else the test fails with the end of its
    output). The extra variables (they may hold a password) go in a 0600 file, removed afterwards; ``args`` are
    more ansible-playbook arguments (``--limit``, ``--skip-tags``)."""
    name = secrets.token_hex(4)
    play_file = work / f"render-{name}.yml"
    play_file.write_text(play_yaml)
    command = [str(BIN / "ansible-playbook"), "-i", inventory, str(play_file), "--tags", "render", *args]
    extra_file = work / f"extra-{name}.json"
    if extra is not None:
        extra_file.touch(mode=0o600)
        extra_file.write_text(json.dumps(extra))
        command += ["-e", f"@{extra_file}"]
    try:
        done = subprocess.run(
            command,
            cwd=ANSIBLE_DIR,
            env=ansible_env(ANSIBLE_ROLES_PATH=str(ROLES)),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        extra_file.unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    return done

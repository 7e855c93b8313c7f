"""Render roles' templates with ansible-playbook for hosts of an inventory, touching no host: one play with the
roles (their defaults and vars, no tasks: only the `render` tag runs) and one template task per file.

:func:`render` writes each :class:`Template` as ``<out>/<inventory_hostname>.<suffix>``; :func:`run_play` runs a
play built by hand (other destinations, other tasks) from :func:`template_task`. Plays are data written as JSON
(which is YAML), so a Jinja expression is a plain string here.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ansible.conftest import ANSIBLE_DIR, BIN, ansible_env

__all__ = ["HOST", "ROLES", "Template", "render", "run_play", "template_task"]

ROLES = ANSIBLE_DIR / "roles"
HOST = "{{ inventory_hostname }}"


@dataclass(frozen=True)
class Template:
    """One template of a role, rendered for each host where ``when`` holds (a Jinja condition)."""

    src: str  # relative to ansible/roles, e.g. network/templates/nftables.conf.j2
    suffix: str  # the rendered file: <out>/<host>.<suffix>
    when: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    mode: str = "0600"
    no_log: bool = False  # the file holds a secret: ansible-playbook must not show it


def template_task(
    name: str,
    src: str,
    dest: str,
    *,
    mode: str = "0600",
    no_log: bool = False,
    when: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A task that renders the role template ``src`` (relative to ansible/roles) to ``dest``, tagged render."""
    task: dict[str, Any] = {
        "name": name,
        "ansible.builtin.template": {"src": str(ROLES / src), "dest": dest, "mode": mode},
        "tags": ["render"],
    }
    if no_log:
        task["no_log"] = True
    if when:
        task["when"] = when
    if variables:
        task["vars"] = dict(variables)
    return task


def run_play(
    inventory: str,
    hosts: str,
    roles: Sequence[str],
    tasks: Sequence[Mapping[str, Any]],
    work: Path,
    *,
    extra: Mapping[str, object] | None = None,
    args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook --tags render on one play (``roles`` loaded for ``hosts`` over a local connection, then
    ``tasks``), which must succeed (else the test fails with the end of its output). The extra variables (they may
    hold a password) go in a 0600 file, removed afterwards; ``args`` are more ansible-playbook arguments."""
    name = secrets.token_hex(4)
    play = [
        {
            "name": "Render",
            "hosts": hosts,
            "connection": "local",
            "gather_facts": False,
            "roles": list(roles),
            "post_tasks": [dict(t) for t in tasks],
        }
    ]
    play_file = work / f"render-{name}.yml"
    play_file.write_text(json.dumps(play))  # JSON is YAML
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


def render(
    inventory: str,
    hosts: str,
    out: Path,
    roles: list[str],
    templates: list[Template],
    extra_vars: dict[str, Any] | None = None,
    *,
    skip_always: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Render ``templates`` for ``hosts`` of ``inventory`` (a path under ansible/) with ``roles`` loaded."""
    tasks = [
        template_task(
            f"Render {t.src}",
            t.src,
            f"{out}/{HOST}.{t.suffix}",
            mode=t.mode,
            no_log=t.no_log,
            when=t.when,
            variables=t.vars,
        )
        for t in templates
    ]
    # the Redis password is looked up in Vault for the real hospital; any value renders the same settings
    extra = {"redis_gateway_password": "render-only", **(extra_vars or {})}
    return run_play(
        inventory, hosts, roles, tasks, out, extra=extra, args=["--skip-tags", "always"] if skip_always else []
    )

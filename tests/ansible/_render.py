"""Render roles' templates with ansible-playbook for hosts of an inventory, touching no host: one play with the
roles (their defaults and vars, no tasks: only the `render` tag runs) and one template task per file, written as
`<out>/<inventory_hostname>.<suffix>`."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ansible.conftest import ANSIBLE_DIR, BIN, ansible_env

ROLES = ANSIBLE_DIR / "roles"


@dataclass(frozen=True)
class Template:
    """One template of a role, rendered for each host where ``when`` holds (a Jinja condition)."""

    src: str  # relative to ansible/roles, e.g. network/templates/nftables.conf.j2
    suffix: str  # the rendered file: <out>/<host>.<suffix>
    when: str | None = None
    vars: dict[str, Any] = field(default_factory=dict)


def render(
    inventory: str,
    hosts: str,
    out: Path,
    roles: list[str],
    templates: list[Template],
    extra_vars: dict[str, Any] | None = None,
    *,
    skip_always: bool = False,
) -> None:
    """Render ``templates`` for ``hosts`` of ``inventory`` (a path under ansible/) with ``roles`` loaded."""
    tasks: list[dict[str, Any]] = []
    for t in templates:
        task: dict[str, Any] = {
            "name": f"Render {t.src}",
            "ansible.builtin.template": {
                "src": str(ROLES / t.src),
                "dest": f"{out}/{{{{ inventory_hostname }}}}.{t.suffix}",
                "mode": "0600",
            },
            "tags": ["render"],
        }
        if t.when:
            task["when"] = t.when
        if t.vars:
            task["vars"] = t.vars
        tasks.append(task)
    play = [{"name": "Render", "hosts": hosts, "connection": "local", "gather_facts": False, "roles": roles}]
    play[0]["post_tasks"] = tasks
    path = out / f"render-{secrets.token_hex(4)}.yml"
    path.write_text(json.dumps(play))  # JSON is YAML
    extra = out / f"extra-{secrets.token_hex(4)}.json"
    # the Redis password is looked up in Vault for the real hospital; any value renders the same settings
    extra.write_text(json.dumps({"redis_gateway_password": "render-only", **(extra_vars or {})}))
    command = [str(BIN / "ansible-playbook"), "-i", inventory, str(path), "--tags", "render", "-e", f"@{extra}"]
    done = subprocess.run(
        command + (["--skip-tags", "always"] if skip_always else []),
        cwd=ANSIBLE_DIR,
        env=ansible_env(ANSIBLE_ROLES_PATH=str(ROLES)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]

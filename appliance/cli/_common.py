"""What every CLI sub-app shares: the loaded settings and the consoles."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from appliance.config import Settings, load_settings

console = Console()
err_console = Console(stderr=True)


def invoking_user() -> str:
    """Who runs the command (``appliance.audit.invoking_user``: $SUDO_USER, else the login name), imported late."""
    from appliance.audit import invoking_user as rule

    return rule()


def settings_of(ctx: typer.Context) -> Settings:
    """The settings loaded once by the root callback (``--config``)."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    settings = obj.get("settings")
    if settings is None:
        config_file: Path | None = obj.get("config_file")
        settings = load_settings(config_file)
        obj["settings"] = settings
        root.obj = obj
    assert isinstance(settings, Settings)
    return settings

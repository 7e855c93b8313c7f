"""`appliance serve`: the embedded TGI-protocol engine (base model + the registry's published LoRA adapters)."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import typer

from appliance.cli._common import err_console
from appliance.errors import ConfigError


def serve(
    ctx: typer.Context,
    base: Path | None = typer.Option(None, "--base", help="Base model directory (else serving.base_model)."),
    adapters: str | None = typer.Option(
        None,
        "--adapters",
        help="Published adapters.json (fingerprints checked) or id=path,... (else <data_dir>/serving/embedded/).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Listen address (keep it on loopback behind the gateway)."),
    port: int | None = typer.Option(None, "--port", help="Listen port (else the port of serving.url)."),
    max_batch_size: int | None = typer.Option(None, "--max-batch-size", help="Sequences per batch."),
    max_queue: int | None = typer.Option(None, "--max-queue", help="Waiting requests before 429."),
    validation_workers: int | None = typer.Option(
        None, "--validation-workers", min=1, help="Tokenizer threads (else serving.validation_workers)."
    ),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for forward passes (else serving)."),
) -> None:
    """Run the embedded engine; SIGHUP or POST /admin/reload re-reads the adapter list."""
    import uvicorn

    from appliance.cli._common import settings_of
    from appliance.serving import AdapterSpec
    from appliance.serving._published import embedded_list_path, parse_adapter_pairs, published_embedded_source
    from appliance.serving._signed import load_publication_keys
    from appliance.serving.engine import Engine, Limits, create_app

    settings = settings_of(ctx)
    cfg = settings.serving
    base_dir = base or (Path(cfg.base_model) if cfg.base_model else None)
    if base_dir is None:
        raise ConfigError("no base model: pass --base DIR or set serving.base_model")

    def signed(path: Path) -> tuple[list[AdapterSpec], Callable[[], list[AdapterSpec]]]:
        # the registry's signature is checked (pinned or key-service public key) before any fingerprint in it
        source = published_embedded_source(path, lambda: load_publication_keys(settings))
        return source(), source

    def source_for(value: str | None) -> tuple[list[AdapterSpec], Callable[[], list[AdapterSpec]]]:
        if value is None:
            return signed(embedded_list_path(settings.serving_dir))
        candidate = Path(value)
        if candidate.suffix == ".json" or candidate.is_file():
            if not candidate.is_file():
                raise ConfigError(f"adapter list not found: {candidate}")
            return signed(candidate)
        pairs = parse_adapter_pairs(value)
        err_console.print("warning: adapters given as id=path carry no published fingerprint", highlight=False)
        return pairs, lambda: pairs

    specs, reload_source = source_for(adapters)
    listen_port = port if port is not None else (urlparse(cfg.url).port or 8081)
    admin_token = cfg.admin_token.get_secret_value() if cfg.admin_token else None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        err_console.print(f"warning: the engine listens on {host}, not loopback; put it behind the gateway only")
    torch_threads = threads if threads is not None else cfg.torch_threads
    if torch_threads > 0:
        import torch

        torch.set_num_threads(torch_threads)
    engine = Engine.start(
        base_dir,
        specs,
        device=cfg.device,
        limits=Limits(max_input_tokens=cfg.max_input_tokens, max_total_tokens=cfg.max_total_tokens),
        max_batch_size=max_batch_size or cfg.max_batch_size,
        max_queue=max_queue if max_queue is not None else cfg.max_queue,
        adapter_source=reload_source,
        validation_workers=validation_workers if validation_workers is not None else cfg.validation_workers,
    )
    app = create_app(engine, admin_token=admin_token, install_sighup=True)
    err_console.print(
        f"serving {engine.model_id} with {len(engine.adapters())} adapter(s) on http://{host}:{listen_port}",
        highlight=False,
    )
    try:
        # proxy_headers off: /admin/reload's loopback rule must see the TCP peer, never X-Forwarded-For
        uvicorn.run(
            app,
            host=host,
            port=listen_port,
            log_level="warning",
            access_log=False,
            server_header=False,
            proxy_headers=False,
        )
    finally:
        engine.close()


def serve_launch(
    ctx: typer.Context,
    target: str = typer.Argument(..., help="tgi or vllm: which published list and how to pass it on."),
    command: list[str] = typer.Argument(..., help="The server command and its arguments (after --)."),
    adapter_list: Path | None = typer.Option(
        None, "--list", help="The published list (else <data_dir>/serving/<target>/ as the registry writes it)."
    ),
) -> None:
    """Check the published list's signature and every adapter's digests, then exec TGI or vLLM with them."""
    import os

    from appliance.cli._common import settings_of
    from appliance.serving._launch import plan_launch
    from appliance.serving._published import tgi_list_path, vllm_list_path
    from appliance.serving._signed import load_publication_keys

    if target not in ("tgi", "vllm"):
        raise ConfigError(f"unknown launch target {target!r}: use tgi or vllm")
    settings = settings_of(ctx)
    path = adapter_list or (tgi_list_path if target == "tgi" else vllm_list_path)(settings.serving_dir)
    plan = plan_launch(target, path, load_publication_keys(settings), command)  # type: ignore[arg-type]
    err_console.print(f"{target}: published list {path} verified; starting {plan.argv[0]}", highlight=False)
    os.execvpe(plan.argv[0], plan.argv, {**os.environ, **plan.env})  # noqa: S606 (argv, no shell: the wrapper)

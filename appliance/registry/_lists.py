"""Changes to what is served: one at a time on this host (the publish lock), each in a transaction that rewrites the
backend lists it touched, re-rendered from the database when it fails; decrypted copies no longer published are
deleted once a change has committed (README.md, "Publish").
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from appliance.errors import ApplianceError, StorageUnavailable
from appliance.registry._context import Context, artifact_of
from appliance.registry._db import exclusive_file_lock
from appliance.registry._models import Adapter, Publication, TrainingRun, utcnow
from appliance.registry._publish import PublishEntry
from appliance.registry._types import Actor

__all__ = ["BackendLists", "end_publications", "entries"]


class BackendLists:
    """The serving directory's lists and decrypted copies, kept equal to the publications in the database."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @contextlib.contextmanager
    def change(self, *targets: str) -> Iterator[Session]:
        """A transaction that rewrites backend lists; if it fails, the lists are re-rendered from the database.

        Decrypted copies no longer published anywhere are deleted once the change has committed.
        """
        with self.lock():
            try:
                with self.ctx.db.session("changing what is served") as s:
                    yield s
            except BaseException:
                with contextlib.suppress(ApplianceError, OSError):
                    self.resync(targets)
                raise
            with contextlib.suppress(ApplianceError, OSError):
                self.resync(())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One serving change at a time on this host: a list rendered by one transaction must not be overwritten
        by another that could not see it (an exclusive flock on ``<serving_dir>/.publish.lock``)."""
        root = self.ctx.publisher.serving_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot lock the serving directory {root}: {exc.strerror}") from exc
        with exclusive_file_lock(root / ".publish.lock", f"cannot lock the serving directory {root}"):
            yield

    def resync(self, targets: tuple[str, ...]) -> None:
        """Re-render ``targets``' lists from the database; delete decrypted copies nothing publishes."""
        publisher = self.ctx.publisher
        with self.ctx.db.session("re-rendering backend lists") as s:
            for t in targets:
                if publisher.list_path(t).exists() or entries(s, t):
                    publisher.write(t, entries(s, t))
            live = {p.served_id for p in s.scalars(select(Publication).where(Publication.unpublished_at.is_(None)))}
        root = publisher.serving_dir / "adapters"
        if root.is_dir():
            for child in root.iterdir():
                if child.is_dir() and not child.name.startswith(".") and child.name not in live:
                    shutil.rmtree(child, ignore_errors=True)

    def render(self, s: Session, targets: Iterable[str]) -> None:
        """Write (signed) each target's list as the session sees the publications now."""
        for target in targets:
            self.ctx.publisher.write(target, entries(s, target))

    def serve_copy(self, s: Session, adapter: Adapter, target: str, actor: Actor) -> None:
        """Decrypt ``adapter`` into the serving directory (every file checked first; the config's base path
        rewritten) and add its publication to ``target`` with the digest of the config bytes written."""
        out = self.ctx.publisher.adapter_dir(adapter.served_id)
        written = self.ctx.artifacts.decrypt_to(
            out, base_model_path=adapter.run.base_model.path, **artifact_of(adapter)
        )
        s.add(
            Publication(
                adapter=adapter,
                target=target,
                served_id=adapter.served_id,
                path=str(out),
                config_sha256=written["adapter_config.json"],
                published_by=actor.subject,
            )
        )


def end_publications(adapter: Adapter, publications: list[Publication], actor: Actor) -> None:
    """Mark ``publications`` ended by ``actor`` now."""
    now = utcnow()
    for publication in publications:
        publication.unpublished_at = now
        publication.unpublished_by = actor.subject
    adapter.updated_at = now


def entries(s: Session, target: str) -> list[PublishEntry]:
    """What ``target``'s list holds: its publications not yet ended."""
    query = (
        select(Publication)
        .options(selectinload(Publication.adapter).selectinload(Adapter.run).selectinload(TrainingRun.base_model))
        .where(Publication.target == target, Publication.unpublished_at.is_(None))
    )
    return [
        PublishEntry(
            served_id=p.served_id,
            name=p.adapter.name,
            version=p.adapter.version,
            path=p.path,
            fingerprint=p.adapter.weights_fingerprint,
            base_model=p.adapter.run.base_model.path,
            config_sha256=p.config_sha256,
        )
        for p in s.scalars(query)
    ]

"""Backend for the embedded engine over HTTP: the same protocol as TGI, run by ``appliance serve``.

The engine itself refuses unknown adapters (422) and loads only the registry's published list, checking each
fingerprint, so the client asks the engine which adapters it serves instead of reading the list from disk.
"""

from __future__ import annotations

from typing import Any

from appliance.serving._tgi import TGIBackend


class EmbeddedBackend(TGIBackend):
    """The embedded engine reached over loopback HTTP (TGI protocol; ``/v1/models`` lists its adapters)."""

    name = "embedded"

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("published", None)
        super().__init__(base_url, **kwargs)

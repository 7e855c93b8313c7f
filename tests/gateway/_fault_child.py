"""A gateway process for the storage fault tests: the real audit writer (segment files) and local key service,
the shipped fake backend and catalog, and JWTs checked against a JWKS file; served by uvicorn on loopback.

Run as ``python -m tests.gateway._fault_child DATA_DIR POLICIES_DIR JWKS_FILE PORT`` (the test sets LD_PRELOAD).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import uvicorn

from appliance.audit import open_audit_log
from appliance.config import load_settings
from appliance.gateway import create_app
from appliance.keys import open_key_service
from appliance.testing import FakeBackend, StaticCatalog
from tests.gateway.conftest import ADAPTERS, ISSUER


def main(data_dir: str, policies_dir: str, jwks_file: str, port: str) -> None:
    settings = load_settings(data_dir=Path(data_dir), policies_dir=Path(policies_dir))
    keys = open_key_service(settings)
    audit = open_audit_log(settings, keys=keys)
    jwks = json.loads(Path(jwks_file).read_text())

    async def fetch() -> dict[str, Any]:
        return jwks  # type: ignore[no-any-return]

    app = create_app(
        settings,
        backend=FakeBackend({a.served_id for a in ADAPTERS}),
        audit=audit,
        registry=StaticCatalog(ADAPTERS),
        keys=keys,
        jwks_fetcher=fetch,
        jwt_issuer=ISSUER,
    )
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])

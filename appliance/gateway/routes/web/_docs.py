"""A server-rendered API reference from the OpenAPI schema (no CDN: the appliance is offline)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.response import Template

from appliance.gateway.routes._access import public
from appliance.gateway.routes.web._pages import render


@get("/docs", include_in_schema=False, opt=public())
async def docs(request: Request[Any, Any, Any]) -> Template:
    """A server-rendered API reference from the OpenAPI schema (no scripts from a CDN: the appliance is offline)."""
    schema = request.app.openapi_schema.to_schema()
    ops = []
    for path, item in sorted(schema.get("paths", {}).items()):
        for method, op in item.items():
            if method in ("get", "post", "put", "delete", "patch"):
                ops.append(
                    {
                        "method": method.upper(),
                        "path": path,
                        "summary": op.get("summary", ""),
                        "tags": op.get("tags", []),
                    }
                )
    return render(request, "docs.html", None, ops=ops)

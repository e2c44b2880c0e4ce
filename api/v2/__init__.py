"""The SESv2 REST-JSON API (version 2019-09-27) under ``/v2/email``, SigV4-signed.

``router`` carries every v2 operation; ``api.app`` mounts it when this package exists.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute

from api.v2 import account, identities, metrics, outbound, suppression
from api.v2.auth import CallerDep, V2Route, error
from api.v2.models import ErrorResponse

__all__ = ["router"]

PREFIX = "/v2/email"

# Written by other modules of this package when they exist.
_OPTIONAL = ("api.v2.templates", "api.v2.configuration_sets")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ErrorResponse,
        "description": "An SES v2 error, named by the x-amzn-ErrorType header.",
        "headers": {
            "x-amzn-ErrorType": {
                "description": "The exception, e.g. NotFoundException.",
                "schema": {"type": "string"},
            },
            "x-amzn-RequestId": {
                "description": "The request's id.",
                "schema": {"type": "string"},
            },
        },
    }
    for status in ("4XX", "5XX")
}


def _optional_routers() -> list[APIRouter]:
    """Return the routers of the optional v2 modules that are present."""
    found = []
    for name in _OPTIONAL:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        found.append(_adopt(module.router))
    return found


def _adopt(router: APIRouter) -> APIRouter:
    """Make a router's plain routes V2Routes, so they authenticate and answer alike."""
    for route in router.routes:
        if type(route) is APIRoute:
            # V2Route adds behaviour only in get_route_handler, which FastAPI calls
            # again for routes it includes, so switching the class is enough.
            route.__class__ = V2Route
    return router


_fallback = APIRouter(route_class=V2Route)


@_fallback.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    name="UnknownOperation",
    include_in_schema=False,
)
async def unknown_operation(path: str, call: CallerDep) -> None:
    """Answer a signed request that names no v2 operation."""
    raise error("UnknownOperationException", "The requested operation does not exist.")


_v2 = APIRouter(prefix=PREFIX)
for _module in (identities, account, suppression, outbound, metrics):
    _v2.include_router(_module.router)
for _optional in _optional_routers():
    _v2.include_router(_optional)
# Last, so it only answers what no operation matched: in v2's shape, not FastAPI's.
_v2.include_router(_fallback)

router = APIRouter(responses=_ERRORS)
router.include_router(_v2)
router.include_router(identities.legacy_router)

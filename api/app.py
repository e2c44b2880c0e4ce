"""The HTTP API: SES v1 Query at ``POST /``, health, verification links, metrics.

The v1 Query path is served by a thin ASGI layer in front of FastAPI, because it
carries every SendEmail and FastAPI's routing costs more CPU than the send.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import psycopg
import psycopg_pool
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from api import sigv4, v1, xml
from api.errors import ApiError
from api.query import Params
from mta import identities
from mta.accept import AcceptError, Acceptor, StoreUnavailable
from mta.configuration_sets import ConfigurationSetError
from sesame import accounts, ids, metrics
from sesame.cache import TtlCache
from sesame.ids import AccountId
from sesame.log import bound, event
from sesame.runtime import Runtime
from sesame.settings import Settings

log = logging.getLogger(__name__)

# A 10 MB message is 13.4 MB in base64; leave room for the other fields.
MAX_BODY_BYTES = 20 * 1024 * 1024
CREDENTIAL_CACHE_SECONDS = 60.0
# Invalid verification links a client may open per window before getting 429.
VERIFY_FAILURES_ALLOWED = 20
VERIFY_FAILURE_WINDOW_SECONDS = 600

Scope = dict[str, Any]


class Api:
    """Everything one API process shares between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime.create(settings)
        self.acceptor = Acceptor(self.runtime.pool, self.runtime.redis, settings)
        self.credentials: TtlCache[str, tuple[AccountId, str] | None] = TtlCache(
            CREDENTIAL_CACHE_SECONDS
        )

    async def start(self) -> None:
        await self.runtime.open()
        await self.acceptor.start()

    async def stop(self) -> None:
        await self.acceptor.stop()
        await self.runtime.close()

    async def authenticate(
        self, scope: Scope, body: bytes
    ) -> tuple[sigv4.Authorization, AccountId]:
        headers = scope["headers"]
        auth = sigv4.parse_authorization(headers, scope.get("query_string", b""))

        async def load() -> tuple[AccountId, str] | None:
            async with self.runtime.pool.connection() as conn:
                return await accounts.access_key_secret(
                    conn, self.runtime.box, auth.access_key_id
                )

        found = await self.credentials.get(auth.access_key_id, load)
        if found is None:
            raise sigv4.invalid_client_token()
        account_id, secret = found
        sigv4.check_signature(
            auth,
            secret,
            method=scope["method"],
            raw_path=_raw_path(scope),
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
        )
        return auth, account_id


def _raw_path(scope: Scope) -> str:
    raw: bytes | None = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1").split("?", 1)[0]
    return quote(str(scope["path"]), safe="/~")


class QueryProtocol:
    """ASGI layer that answers SES v1 Query requests and passes the rest on."""

    def __init__(self, api: Api, app: Any) -> None:
        self.api = api
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/"
            and (
                scope["method"] == "POST"
                or (
                    scope["method"] == "GET"
                    and b"Action=" in scope.get("query_string", b"")
                )
            )
        ):
            await self.query(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def query(self, scope: Scope, receive: Any, send: Any) -> None:
        request_id = ids.new_request_id()
        started = time.perf_counter()
        action = "-"
        outcome = "Success"  # or the SES error code: a fixed set, a bounded label
        try:
            body = await _read_body(receive)
            auth, account_id = await self.api.authenticate(scope, body)
            params = Params.parse(body, scope.get("query_string", b""))
            action = params.get("Action") or "-"
            handler = v1.ACTIONS.get(action)
            if handler is None:
                if action == "-":
                    raise ApiError("MissingAction", "Missing Action.")
                raise ApiError(
                    "InvalidAction",
                    f"The action {action} is not valid for this web service.",
                )
            account = await self.api.acceptor.account(account_id)
            if account is None:
                raise sigv4.invalid_client_token()
            call = v1.Call(
                self.api.runtime, self.api.acceptor, account, params, request_id
            )
            with bound(account_id=account_id):
                result = await handler(call)
            payload, status = xml.response(action, request_id, result), 200
        except sigv4.SigV4Error as exc:
            outcome = exc.code
            payload, status = _error(
                ApiError(exc.code, exc.message, exc.status), request_id
            )
        except ApiError as exc:
            outcome = exc.code
            payload, status = _error(exc, request_id)
        except AcceptError as exc:
            outcome = exc.code
            payload, status = _error(ApiError(exc.code, exc.message), request_id)
        except (identities.IdentityError, ConfigurationSetError) as exc:
            outcome = exc.code
            payload, status = _error(ApiError(exc.code, exc.message), request_id)
        except (
            StoreUnavailable,
            psycopg.OperationalError,
            psycopg_pool.PoolTimeout,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        ) as exc:
            event(
                log,
                "store unavailable",
                logging.WARNING,
                action=action,
                error=type(exc).__name__,
            )
            outcome = "ServiceUnavailable"
            payload, status = _error(
                ApiError("ServiceUnavailable", "Service is unavailable. Retry later."),
                request_id,
            )
        except Exception:
            log.exception("request failed", extra={"fields": {"action": action}})
            outcome = "InternalFailure"
            payload, status = _error(
                ApiError("InternalFailure", "The request processing has failed."),
                request_id,
            )
        event(
            log,
            "request",
            logging.DEBUG,
            action=action,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )
        known = action if action in v1.ACTIONS else metrics.UNKNOWN_ACTION
        metrics.api_request(known, outcome, time.perf_counter() - started)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/xml"),
                    (b"x-amzn-requestid", request_id.encode()),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _error(exc: ApiError, request_id: str) -> tuple[bytes, int]:
    return xml.error(exc.fault, exc.code, exc.message, request_id), exc.status


async def _read_body(receive: Any) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError("InvalidParameterValue", "The request is too large.", 413)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def create_app(settings: Settings) -> QueryProtocol:
    """Build the API application for the given settings."""
    api = Api(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await api.start()
        try:
            yield
        finally:
            await api.stop()

    app = FastAPI(
        title="Sesame",
        description="Amazon SES-compatible email sending. SES v1 Query API at POST /.",
        lifespan=lifespan,
    )

    app.state.api = api
    _include_optional_routers(app)
    metrics.known_api_actions(v1.ACTIONS)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        # Reading every process's files is disk I/O: keep it off the loop.
        body, content_type = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=content_type)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok\n")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        try:
            async with api.runtime.pool.connection(timeout=2) as conn:
                await conn.execute("select 1")
            await api.runtime.redis.ping()
        except Exception as exc:
            return PlainTextResponse(
                f"not ready: {type(exc).__name__}\n", status_code=503
            )
        return PlainTextResponse("ready\n")

    @app.get("/verify/{token}", include_in_schema=False)
    async def verify(token: str, request: Request) -> HTMLResponse:
        client = request.client.host if request.client else "unknown"
        failures_key = f"sesame:verify:failures:{client}"
        failures = await api.runtime.redis.get(failures_key)
        if failures is not None and int(failures) >= VERIFY_FAILURES_ALLOWED:
            return HTMLResponse(
                "<h1>Too many invalid verification links. Try again later.</h1>",
                status_code=429,
            )
        async with api.runtime.pool.connection() as conn:
            identity = await identities.confirm_email_identity(conn, token)
        if identity is None:
            # Tokens carry 256 bits, so guessing is hopeless anyway; counting
            # failures per client keeps a scanner from loading the database.
            async with api.runtime.redis.pipeline(transaction=False) as pipe:
                pipe.incr(failures_key)
                pipe.expire(failures_key, VERIFY_FAILURE_WINDOW_SECONDS, nx=True)
                await pipe.execute()
            return HTMLResponse(
                "<h1>This verification link is invalid or has expired.</h1>",
                status_code=404,
            )
        api.acceptor.forget(identity.account_id)
        event(
            log,
            "identity verified",
            account_id=identity.account_id,
            identity_id=identity.id,
        )
        return HTMLResponse(
            "<h1>Congratulations!</h1><p>You have successfully verified an email"
            " address. You can now start sending email from this address.</p>"
        )

    return QueryProtocol(api, app)


def _include_optional_routers(app: FastAPI) -> None:
    """Mount the SESv2 REST routes when that package is present."""
    try:
        from api.v2 import router
    except ImportError:
        return
    app.include_router(router)


def app_from_environment() -> QueryProtocol:
    """Entry point for uvicorn's ``--factory``: settings from the environment."""
    from sesame import log as logsetup
    from sesame.settings import get_settings

    settings = get_settings()
    logsetup.setup(settings.log_level)
    metrics.start_heartbeat("api")
    return create_app(settings)

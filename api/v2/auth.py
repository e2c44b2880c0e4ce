"""SESv2 request handling: SigV4 over the raw request, errors in v2's JSON shape.

Routes built with :class:`V2Route` authenticate before FastAPI parses anything and
answer every failure with ``x-amzn-ErrorType``, ``x-amzn-RequestId`` and a message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

import psycopg
import psycopg.errors
import psycopg_pool
import redis.exceptions
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api import sigv4
from api.app import MAX_BODY_BYTES, Api
from api.errors import ApiError
from mta.accept import AcceptError, Acceptor, StoreUnavailable
from mta.identities import IdentityError
from mta.message import MessageError
from sesame import ids, metrics
from sesame.accounts import Account
from sesame.log import bound, event
from sesame.runtime import Runtime

log = logging.getLogger(__name__)

# HTTP status of each SES v2 exception (botocore's sesv2 service model).
STATUS = {
    "AccountSuspendedException": 400,
    "AlreadyExistsException": 400,
    "BadRequestException": 400,
    "ConcurrentModificationException": 500,
    "ConflictException": 409,
    "InternalServiceErrorException": 500,
    "InvalidNextTokenException": 400,
    "LimitExceededException": 400,
    "MailFromDomainNotVerifiedException": 400,
    "MessageRejected": 400,
    "NotFoundException": 404,
    "SendingPausedException": 400,
    "TooManyRequestsException": 429,
    # Not in the model: what Sesame answers for a path no operation has.
    "UnknownOperationException": 404,
}

# Codes raised by code shared with SES v1, and the v2 exception each becomes.
# Both quota refusals become TooManyRequestsException (429): SES v1 answers both
# with Throttling, and which v2 code AWS uses for the daily quota is unconfirmed
# (LimitExceededException is the other candidate). boto3 retries a 429 a few
# times before raising it.
_FROM_V1 = {
    "InvalidParameterValue": "BadRequestException",
    "MissingParameter": "BadRequestException",
    "InvalidParameterCombination": "BadRequestException",
    "MessageRejected": "MessageRejected",
    "Throttling": "TooManyRequestsException",
    "AccountSendingPausedException": "SendingPausedException",
    "ConfigurationSetDoesNotExist": "NotFoundException",
    "ConfigurationSetSendingPausedException": "SendingPausedException",
    "TemplateDoesNotExist": "NotFoundException",
    "MailFromDomainNotVerified": "MailFromDomainNotVerifiedException",
    "InternalFailure": "InternalServiceErrorException",
}

_UNAVAILABLE = (
    StoreUnavailable,
    psycopg.OperationalError,
    psycopg_pool.PoolTimeout,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def error(code: str, message: str) -> ApiError:
    """Return an SES v2 exception with its HTTP status."""
    return ApiError(code, message, STATUS.get(code, 400))


def not_found(message: str) -> ApiError:
    """Return a NotFoundException (404)."""
    return error("NotFoundException", message)


def bad_request(message: str) -> ApiError:
    """Return a BadRequestException (400)."""
    return error("BadRequestException", message)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated v2 request: the account and what serves it."""

    account: Account
    api: Api
    request_id: str

    @property
    def runtime(self) -> Runtime:
        """Pools, clients and settings of this process."""
        return self.api.runtime

    @property
    def acceptor(self) -> Acceptor:
        """The one accept path."""
        return self.api.acceptor


async def caller(request: Request) -> Caller:
    """FastAPI dependency: the authenticated caller of this request."""
    found = getattr(request.state, "caller", None)
    if isinstance(found, Caller):
        return found
    # Only routes not built with V2Route get here; authenticate them the same way.
    return await authenticate(request, ids.new_request_id())


CallerDep = Annotated[Caller, Depends(caller)]


async def authenticate(request: Request, request_id: str) -> Caller:
    """Check the SigV4 signature over the raw path and body; load the account."""
    api: Api = request.app.state.api
    body = await _read_body(request)
    _, account_id = await api.authenticate(dict(request.scope), body)
    account = await api.acceptor.account(account_id)
    if account is None:
        raise sigv4.invalid_client_token()
    return Caller(account, api, request_id)


async def _read_body(request: Request) -> bytes:
    """Read the whole body once, refusing more than MAX_BODY_BYTES."""
    too_large = ApiError(
        "BadRequestException",
        f"The request is larger than {MAX_BODY_BYTES} bytes.",
        413,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    if hasattr(request, "_body"):
        return await request.body()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette keeps a read body here; FastAPI's handler then parses it from there.
    request._body = body
    return body


class V2Route(APIRoute):
    """An SES v2 operation: authenticated first, errors answered as SES v2 does."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        operation = self.name

        async def route(request: Request) -> Response:
            request_id = ids.new_request_id()
            started = time.perf_counter()
            account_id = None
            try:
                found = await authenticate(request, request_id)
                request.state.caller = found
                account_id = found.account.id
                with bound(account_id=account_id):
                    response = await handle(request)
            except Exception as exc:
                response = error_response(exc, operation)
            response.headers["x-amzn-RequestId"] = request_id
            outcome = response.headers.get("x-amzn-ErrorType", "Success")
            # Operations and error types are fixed sets: bounded labels.
            metrics.api_request(operation, outcome, time.perf_counter() - started)
            event(
                log,
                "request",
                logging.DEBUG,
                action=operation,
                account_id=account_id,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            return response

        return route


def error_response(exc: Exception, operation: str = "-") -> Response:
    """Render an exception as SES v2 does: status, x-amzn-ErrorType, message."""
    code, message, status = _describe(exc, operation)
    return JSONResponse(
        {"message": message}, status_code=status, headers={"x-amzn-ErrorType": code}
    )


def _describe(exc: Exception, operation: str) -> tuple[str, str, int]:
    """Return the (code, message, status) an exception is answered with."""
    if isinstance(exc, (ApiError, AcceptError, IdentityError, MessageError)):
        code = exc.code
        status = exc.status if isinstance(exc, ApiError) else 400
        if code in _FROM_V1:
            code = _FROM_V1[code]
            status = STATUS[code]
        return code, exc.message, status
    if isinstance(exc, sigv4.SigV4Error):
        return exc.code, exc.message, exc.status
    if isinstance(exc, RequestValidationError):
        return "BadRequestException", _validation_message(exc), 400
    if isinstance(exc, HTTPException):
        return "BadRequestException", str(exc.detail), exc.status_code
    if isinstance(exc, (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)):
        # A value PostgreSQL cannot hold (a NUL character, an oversized key):
        # the request's fault, whichever field it came in.
        event(log, "value refused by the database", action=operation)
        return (
            "BadRequestException",
            "The request contains a value that cannot be stored.",
            400,
        )
    if isinstance(exc, _UNAVAILABLE):
        event(
            log,
            "store unavailable",
            logging.WARNING,
            action=operation,
            error=type(exc).__name__,
        )
        return "ServiceUnavailable", "Service is unavailable. Retry later.", 503
    log.error("request failed", exc_info=exc, extra={"fields": {"action": operation}})
    return "InternalServiceErrorException", "The request processing has failed.", 500


def _validation_message(exc: RequestValidationError) -> str:
    """Describe the first problem pydantic found, naming the member by its path."""
    errors = exc.errors()
    if not errors:
        return "The request is not valid."
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    where = ".".join(str(part) for part in first.get("loc", ())[1:])
    reason = str(first.get("msg", "is not valid"))
    return f"{where}: {reason}." if where else f"{reason}."

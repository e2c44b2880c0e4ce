"""SESv2 authentication and errors: codes, statuses, headers and the JSON body."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import httpx
import psycopg
import pytest
from botocore.exceptions import ClientError
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from api import sigv4
from api.errors import ApiError
from api.v2 import _adopt
from api.v2.auth import error_response
from mta.accept import AcceptError, StoreUnavailable
from sesame.accounts import NewCredentials
from tests.api.v2.conftest import error_of, signed_request


def plain_request(url: str, method: str, body: bytes = b"") -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        url,
        data=body or None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = (
                response.status,
                response.headers,
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        status, headers, payload = exc.code, exc.headers, exc.read()
    lowered = {k.lower(): v for k, v in headers.items()}
    return status, lowered, json.loads(payload)


def test_unsigned_request_is_refused_before_parsing(api_server):
    status, headers, body = plain_request(
        api_server.url + "/v2/email/outbound-emails", "POST", b"{not json"
    )
    assert status == 403
    assert headers["x-amzn-errortype"] == "MissingAuthenticationToken"
    assert headers["x-amzn-requestid"]
    assert headers["content-type"] == "application/json"
    assert body == {"message": sigv4._MISSING_TOKEN}


def test_unknown_key_and_wrong_secret(api_server, sandbox):
    unknown = NewCredentials("AKIAUNKNOWNUNKNOWN00", "x" * 40, "", "")
    client = api_server.client(unknown, service="sesv2")
    with pytest.raises(ClientError) as excinfo:
        client.get_account()
    assert error_of(excinfo)[0::2] == ("InvalidClientTokenId", 403)

    wrong = NewCredentials(sandbox.creds.access_key_id, "y" * 40, "", "")
    client = api_server.client(wrong, service="sesv2")
    with pytest.raises(ClientError) as excinfo:
        client.get_account()
    assert error_of(excinfo)[0::2] == ("SignatureDoesNotMatch", 403)


def test_request_id_matches_the_header(sandbox):
    answer = sandbox.client.get_account()
    meta = answer["ResponseMetadata"]
    assert meta["RequestId"] == meta["HTTPHeaders"]["x-amzn-requestid"]


def test_invalid_json_is_a_bad_request(sandbox):
    status, headers, body = signed_request(
        sandbox.server, sandbox.creds, "PUT", "/v2/email/account/sending"
    )
    assert status == 400 and headers["x-amzn-errortype"] == "BadRequestException"
    status, headers, body = sandbox.request(
        "POST", "/v2/email/list-identities", {"PageSize": "many"}
    )
    assert status == 400 and headers["x-amzn-errortype"] == "BadRequestException"
    assert body["message"].startswith("PageSize:")


def test_oversized_body(api_server):
    """A declared length over the limit is refused without reading the body."""
    host, port = api_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v2/email/outbound-emails HTTP/1.1\r\n"
            b"Host: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: " + str(30 * 1024 * 1024).encode() + b"\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += conn.recv(4096)
    head = reply.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 413")
    assert "x-amzn-errortype: badrequestexception" in head


@pytest.mark.parametrize(
    "exc, expected",
    [
        (
            AcceptError("Throttling", "Maximum sending rate exceeded."),
            ("TooManyRequestsException", 429, "Maximum sending rate exceeded."),
        ),
        (
            AcceptError("Throttling", "Daily message quota exceeded."),
            ("TooManyRequestsException", 429, "Daily message quota exceeded."),
        ),
        (
            AcceptError("AccountSendingPausedException", "Account is paused."),
            ("SendingPausedException", 400, "Account is paused."),
        ),
        (
            AcceptError("MessageRejected", "Email address is not verified."),
            ("MessageRejected", 400, "Email address is not verified."),
        ),
        (
            ApiError("ConfigurationSetDoesNotExist", "Configuration set <x>."),
            ("NotFoundException", 404, "Configuration set <x>."),
        ),
        (
            ApiError("InvalidParameterValue", "Bad."),
            ("BadRequestException", 400, "Bad."),
        ),
        (
            StoreUnavailable("down"),
            ("ServiceUnavailable", 503, "Service is unavailable. Retry later."),
        ),
        (
            psycopg.OperationalError("down"),
            ("ServiceUnavailable", 503, "Service is unavailable. Retry later."),
        ),
        (
            RuntimeError("bug"),
            (
                "InternalServiceErrorException",
                500,
                "The request processing has failed.",
            ),
        ),
    ],
)
def test_error_mapping(exc, expected):
    response = error_response(exc)
    code, status, message = expected
    assert response.status_code == status
    assert response.headers["x-amzn-ErrorType"] == code
    assert json.loads(response.body) == {"message": message}


async def test_routers_of_other_modules_are_adopted():
    """A plain APIRouter's routes still authenticate and answer in v2's shape."""

    class RefusingApi:
        async def authenticate(self, scope, body):
            raise sigv4.invalid_client_token()

    router = APIRouter()

    @router.get("/thing")
    async def thing() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.state.api = RefusingApi()
    app.include_router(_adopt(router))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/thing")
    assert response.status_code == 403
    assert response.headers["x-amzn-ErrorType"] == "InvalidClientTokenId"
    assert response.headers["x-amzn-RequestId"]


def test_v2_requests_are_counted_in_api_metrics(api_server, sandbox):
    def count(action: str, outcome: str) -> float:
        with urllib.request.urlopen(api_server.url + "/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "sesame_api_requests_total" and sample.labels == {
                    "action": action,
                    "outcome": outcome,
                }:
                    return sample.value
        return 0.0

    ok, missing = (
        count("GetAccount", "Success"),
        count("GetEmailIdentity", "NotFoundException"),
    )
    sandbox.client.get_account()
    with pytest.raises(ClientError):
        sandbox.client.get_email_identity(EmailIdentity="nobody.example.com")
    assert count("GetAccount", "Success") == ok + 1
    assert count("GetEmailIdentity", "NotFoundException") == missing + 1

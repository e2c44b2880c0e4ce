"""Accounts with boto3 ``sesv2`` clients, and raw SigV4-signed requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from sesame import accounts
from tests.support.api_server import ApiServer, create_account


@dataclass
class Tenant:
    """An account, its credentials and a sesv2 client signed with them."""

    account: accounts.Account
    creds: accounts.NewCredentials
    client: Any
    server: ApiServer

    @property
    def id(self) -> str:
        return self.account.id

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """Send a SigV4-signed request; return (status, headers, parsed JSON)."""
        return signed_request(self.server, self.creds, method, path, body, headers)


def signed_request(
    server: ApiServer,
    creds: accounts.NewCredentials,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Sign a request as botocore does and send it with urllib."""
    data = b"" if body is None else json.dumps(body).encode()
    request = AWSRequest(
        method=method,
        url=server.url + path,
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    SigV4Auth(
        Credentials(creds.access_key_id, creds.secret_access_key), "ses", "us-east-1"
    ).add_auth(request)
    prepared = request.prepare()
    sent = urllib.request.Request(
        prepared.url,
        data=data or None,
        method=method,
        headers=dict(prepared.headers.items()),
    )
    try:
        with urllib.request.urlopen(sent, timeout=10) as response:
            status, got, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, got, payload = exc.code, exc.headers, exc.read()
    lowered = {name.lower(): value for name, value in got.items()}
    return status, lowered, json.loads(payload) if payload else None


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = excinfo.value.response
    return (
        err["Error"]["Code"],
        err["Error"]["Message"],
        err["ResponseMetadata"]["HTTPStatusCode"],
    )


def _tenant(server: ApiServer, name: str, production: bool = False) -> Tenant:
    account, creds = create_account(server.settings, name, production=production)
    return Tenant(account, creds, server.client(creds, service="sesv2"), server)


@pytest.fixture
def sandbox(api_server: ApiServer) -> Tenant:
    return _tenant(api_server, "sandbox")


@pytest.fixture
def production(api_server: ApiServer) -> Tenant:
    return _tenant(api_server, "production", production=True)


@pytest.fixture
def other(api_server: ApiServer) -> Tenant:
    """A second account, to show that accounts cannot see each other's objects."""
    return _tenant(api_server, "other", production=True)

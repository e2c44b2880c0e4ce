"""The v2 API's OpenAPI description, and Schemathesis runs against it, signed.

Every generated request is SigV4-signed by botocore after serialisation, so the
server sees a valid signature over the exact bytes; the checks are no 5xx and
responses that match the documented schemas.
"""

from __future__ import annotations

import json
import urllib.request

import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sesame.accounts import NewCredentials

OPERATIONS = {
    ("post", "/v2/email/identities"): ("CreateEmailIdentityRequest", None),
    ("get", "/v2/email/identities/{EmailIdentity}"): (None, "GetEmailIdentityResponse"),
    ("delete", "/v2/email/identities/{EmailIdentity}"): (None, None),
    ("post", "/v2/email/list-identities"): (
        "ListEmailIdentitiesRequest",
        "ListEmailIdentitiesResponse",
    ),
    ("get", "/v2/email/identities"): (None, "ListEmailIdentitiesResponse"),
    ("put", "/v2/email/identities/{EmailIdentity}/dkim"): (
        "PutEmailIdentityDkimAttributesRequest",
        None,
    ),
    ("put", "/v2/email/identities/{EmailIdentity}/dkim/signing"): (
        "PutEmailIdentityDkimSigningAttributesRequest",
        "PutEmailIdentityDkimSigningAttributesResponse",
    ),
    ("put", "/v1/email/identities/{EmailIdentity}/dkim/signing"): (
        "PutEmailIdentityDkimSigningAttributesRequest",
        "PutEmailIdentityDkimSigningAttributesResponse",
    ),
    ("put", "/v2/email/identities/{EmailIdentity}/mail-from"): (
        "PutEmailIdentityMailFromAttributesRequest",
        None,
    ),
    ("get", "/v2/email/account"): (None, "GetAccountResponse"),
    ("post", "/v2/email/account/details"): ("PutAccountDetailsRequest", None),
    ("put", "/v2/email/account/sending"): ("PutAccountSendingAttributesRequest", None),
    ("put", "/v2/email/account/suppression"): (
        "PutAccountSuppressionAttributesRequest",
        None,
    ),
    ("put", "/v2/email/suppression/addresses"): (
        "PutSuppressedDestinationRequest",
        None,
    ),
    ("get", "/v2/email/suppression/addresses"): (
        None,
        "ListSuppressedDestinationsResponse",
    ),
    ("get", "/v2/email/suppression/addresses/{EmailAddress}"): (
        None,
        "GetSuppressedDestinationResponse",
    ),
    ("delete", "/v2/email/suppression/addresses/{EmailAddress}"): (None, None),
    ("post", "/v2/email/outbound-emails"): ("SendEmailRequest", "SendEmailResponse"),
    ("post", "/v2/email/outbound-bulk-emails"): (
        "SendBulkEmailRequest",
        "SendBulkEmailResponse",
    ),
    ("post", "/v2/email/metrics/batch"): (
        "BatchGetMetricDataRequest",
        "BatchGetMetricDataResponse",
    ),
}


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_openapi_describes_every_operation(api_server):
    status, body = fetch(api_server.url + "/openapi.json")
    assert status == 200
    spec = json.loads(body)
    assert "/" not in spec["paths"]
    for (method, path), (request, response) in OPERATIONS.items():
        operation = spec["paths"][path][method]
        responses = operation["responses"]
        assert "422" not in responses, path
        assert responses["4XX"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        if request:
            schema = operation["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{request}"}, path
        if response:
            schema = responses["200"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{response}"}, path
    send = spec["components"]["schemas"]["SendEmailRequest"]["properties"]
    assert {"FromEmailAddress", "Destination", "Content", "EmailTags"} <= set(send)
    assert spec["components"]["schemas"]["Attachment"]["properties"]["FileName"][
        "description"
    ]
    status, page = fetch(api_server.url + "/docs")
    assert status == 200 and b"swagger" in page.lower()


class BotocoreSigV4(requests.auth.AuthBase):
    """Sign a prepared request as boto3 would, over the bytes about to be sent."""

    def __init__(self, creds: NewCredentials) -> None:
        self.credentials = Credentials(creds.access_key_id, creds.secret_access_key)

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode()
        headers = {}
        if "Content-Type" in prepared.headers:
            headers["Content-Type"] = prepared.headers["Content-Type"]
        signed = AWSRequest(
            method=prepared.method, url=prepared.url, data=body, headers=headers
        )
        SigV4Auth(self.credentials, "ses", "us-east-1").add_auth(signed)
        for name in ("Authorization", "X-Amz-Date"):
            prepared.headers[name] = signed.headers[name]
        return prepared


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Examples per operation: positive (valid by the schema) and negative (not).
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 10}


def test_generated_requests(api_server, sandbox):
    """Every operation, fuzzed from its schema, answers without 5xx, as documented."""
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    auth = BotocoreSigV4(sandbox.creds)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():
            if mode is GenerationMode.NEGATIVE and not (
                operation.body or operation.query
            ):
                continue  # any string is a valid path parameter: nothing to negate
            strategy = operation.as_strategy(mode)

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                response = case.call(auth=auth, timeout=30)
                assert response.status_code != 403, response.text
                case.validate_response(response, checks=CHECKS)

            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)

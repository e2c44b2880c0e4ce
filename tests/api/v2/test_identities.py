"""SESv2 identities through boto3's ``sesv2`` client and raw signed requests."""

from __future__ import annotations

import base64
from urllib.parse import quote

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sesame import crypto
from tests.api.v2.conftest import error_of
from tests.support.api_server import verify_identity


def rows(settings, sql: str, *params):
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def rsa_key_b64(pem: bool = False) -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if pem:
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    else:
        # What SES documents: the base64 body of a PKCS#1 key, without armour.
        data = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    return key, base64.b64encode(data).decode()


def test_domain_gets_easy_dkim_and_dns_records(sandbox):
    created = sandbox.client.create_email_identity(EmailIdentity="Example.COM")
    assert created["IdentityType"] == "DOMAIN"
    assert created["VerifiedForSendingStatus"] is False
    dkim = created["DkimAttributes"]
    assert dkim["SigningEnabled"] is True
    assert dkim["Status"] == "PENDING"
    assert dkim["SigningAttributesOrigin"] == "AWS_SES"
    assert dkim["NextSigningKeyLength"] == "RSA_2048_BIT"
    assert len(dkim["Tokens"]) == 3
    assert dkim["LastKeyGenerationTimestamp"].year >= 2024

    got = sandbox.client.get_email_identity(EmailIdentity="example.com")
    assert got["IdentityType"] == "DOMAIN"
    assert got["VerificationStatus"] == "PENDING"
    assert got["DkimAttributes"]["Tokens"] == dkim["Tokens"]
    assert got["MailFromAttributes"] == {"BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}
    assert got["Policies"] == {} and got["Tags"] == []
    assert got["FeedbackForwardingStatus"] is True

    status, headers, body = sandbox.request("GET", "/v2/email/identities/example.com")
    assert status == 200 and headers["x-amzn-requestid"]
    records = {(r["Name"], r["Type"]) for r in body["DnsRecords"]}
    assert ("_amazonses.example.com", "TXT") in records
    for token in dkim["Tokens"]:
        assert (f"{token}._domainkey.example.com", "TXT") in records
    dkim_values = [r["Value"] for r in body["DnsRecords"] if "_domainkey" in r["Name"]]
    assert all(v.startswith("v=DKIM1; k=rsa; p=") for v in dkim_values)


def test_address_identity_is_mailed_a_link(api_server, sandbox):
    created = sandbox.client.create_email_identity(EmailIdentity="user+x@Example.com")
    assert created == {
        "IdentityType": "EMAIL_ADDRESS",
        "VerifiedForSendingStatus": False,
        "ResponseMetadata": created["ResponseMetadata"],
    }
    sent = rows(
        api_server.settings,
        "select r.address from messages m join recipients r on r.message_id = m.id"
        " where m.account_id = %s and m.interface = 'system'",
        sandbox.id,
    )
    assert sent == [("user+x@example.com",)]

    # '+' and '@' travel percent-encoded; SigV4 is checked on the raw path.
    got = sandbox.client.get_email_identity(EmailIdentity="user+x@example.com")
    assert got["IdentityType"] == "EMAIL_ADDRESS"
    assert got["VerificationStatus"] == "PENDING"
    assert got["DkimAttributes"]["Status"] == "NOT_STARTED"
    status, _, body = sandbox.request(
        "GET", "/v2/email/identities/" + quote("user+x@example.com", safe="")
    )
    assert status == 200 and body["DnsRecords"] == []


def test_verified_identity_reads_success(api_server, sandbox):
    verify_identity(api_server.settings, sandbox.id, "me@example.org")
    got = sandbox.client.get_email_identity(EmailIdentity="me@example.org")
    assert got["VerificationStatus"] == "SUCCESS"
    assert got["VerifiedForSendingStatus"] is True
    assert got["VerificationInfo"]["LastSuccessTimestamp"].year >= 2024


def test_duplicate_identity_already_exists(sandbox):
    sandbox.client.create_email_identity(EmailIdentity="dup.example")
    with pytest.raises(sandbox.client.exceptions.AlreadyExistsException) as excinfo:
        sandbox.client.create_email_identity(EmailIdentity="DUP.example.")
    assert error_of(excinfo)[2] == 400


def test_invalid_identity_is_a_bad_request(sandbox):
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.create_email_identity(EmailIdentity="not a domain")


def test_unknown_identity_not_found_and_delete(sandbox):
    client = sandbox.client
    with pytest.raises(client.exceptions.NotFoundException) as excinfo:
        client.get_email_identity(EmailIdentity="nowhere.example")
    code, _, status = error_of(excinfo)
    assert (code, status) == ("NotFoundException", 404)
    with pytest.raises(client.exceptions.NotFoundException):
        client.delete_email_identity(EmailIdentity="nowhere.example")

    client.create_email_identity(EmailIdentity="gone.example")
    client.delete_email_identity(EmailIdentity="gone.example")
    with pytest.raises(client.exceptions.NotFoundException):
        client.get_email_identity(EmailIdentity="gone.example")


def test_list_identities_pages_and_filters(api_server, sandbox):
    client = sandbox.client
    for name in ("a.example", "b.example", "c@example.net"):
        client.create_email_identity(EmailIdentity=name)
    verify_identity(api_server.settings, sandbox.id, "b.example")

    first = client.list_email_identities(PageSize=2)
    assert [i["IdentityName"] for i in first["EmailIdentities"]] == [
        "a.example",
        "b.example",
    ]
    assert first["EmailIdentities"][1] == {
        "IdentityType": "DOMAIN",
        "IdentityName": "b.example",
        "SendingEnabled": True,
        "VerificationStatus": "SUCCESS",
    }
    second = client.list_email_identities(PageSize=2, NextToken=first["NextToken"])
    assert [i["IdentityName"] for i in second["EmailIdentities"]] == ["c@example.net"]
    assert "NextToken" not in second

    def names(**filters):
        listed = client.list_email_identities(Filter=filters)["EmailIdentities"]
        return [i["IdentityName"] for i in listed]

    assert names(IDENTITY_TYPE="EMAIL_ADDRESS") == ["c@example.net"]
    assert names(VERIFICATION_STATUS="SUCCESS") == ["b.example"]
    assert names(IDENTITY_NAME_CONTAINS="A.EX") == ["a.example"]
    assert names(IDENTITY_TYPE="MANAGED_DOMAIN") == []
    with pytest.raises(client.exceptions.BadRequestException):
        client.list_email_identities(NextToken="not-a-token")


def test_old_get_list_route_with_signed_requests(sandbox):
    for name in ("a.example", "b.example", "c.example"):
        sandbox.client.create_email_identity(EmailIdentity=name)
    status, headers, body = sandbox.request("GET", "/v2/email/identities?PageSize=2")
    assert status == 200 and headers["x-amzn-requestid"]
    assert [i["IdentityName"] for i in body["EmailIdentities"]] == [
        "a.example",
        "b.example",
    ]
    token = quote(body["NextToken"], safe="")
    status, _, body = sandbox.request("GET", f"/v2/email/identities?NextToken={token}")
    assert status == 200
    assert [i["IdentityName"] for i in body["EmailIdentities"]] == ["c.example"]
    assert "NextToken" not in body


def test_dkim_signing_switch(sandbox):
    client = sandbox.client
    client.create_email_identity(EmailIdentity="sign.example")
    client.put_email_identity_dkim_attributes(
        EmailIdentity="sign.example", SigningEnabled=False
    )
    assert not client.get_email_identity(EmailIdentity="sign.example")[
        "DkimAttributes"
    ]["SigningEnabled"]
    client.put_email_identity_dkim_attributes(
        EmailIdentity="sign.example", SigningEnabled=True
    )
    assert client.get_email_identity(EmailIdentity="sign.example")["DkimAttributes"][
        "SigningEnabled"
    ]
    with pytest.raises(client.exceptions.BadRequestException) as excinfo:
        client.put_email_identity_dkim_attributes(
            EmailIdentity="unknown.example", SigningEnabled=True
        )
    assert "not verified for DKIM signing" in error_of(excinfo)[1]


def test_dkim_keys_made_for_a_domain_without_them(api_server, sandbox):
    verify_identity(api_server.settings, sandbox.id, "bare.example")
    sandbox.client.put_email_identity_dkim_attributes(
        EmailIdentity="bare.example", SigningEnabled=True
    )
    dkim = sandbox.client.get_email_identity(EmailIdentity="bare.example")[
        "DkimAttributes"
    ]
    assert dkim["SigningEnabled"] is True and len(dkim["Tokens"]) == 3


def test_byodkim_at_creation_is_stored_sealed(api_server, sandbox):
    key, encoded = rsa_key_b64()
    created = sandbox.client.create_email_identity(
        EmailIdentity="own.example",
        DkimSigningAttributes={
            "DomainSigningSelector": "sel1",
            "DomainSigningPrivateKey": encoded,
        },
    )
    dkim = created["DkimAttributes"]
    assert dkim["SigningAttributesOrigin"] == "EXTERNAL"
    assert dkim["Tokens"] == ["sel1"]
    assert dkim["Status"] == "PENDING"

    ((origin, selector, algorithm, sealed, public),) = rows(
        api_server.settings,
        "select i.dkim_origin, k.selector, k.algorithm, k.private_key_sealed,"
        " k.public_key from identities i join dkim_keys k on k.identity_id = i.id"
        " where i.account_id = %s and i.name = 'own.example'",
        sandbox.id,
    )
    assert (origin, selector, algorithm) == ("external", "sel1", "rsa-sha256")
    settings = api_server.settings
    box = crypto.SecretBox(
        crypto.load_or_create_key(settings.secret_key, settings.data_dir)
    )
    pem = box.open(bytes(sealed), b"sel1")
    stored = serialization.load_pem_private_key(pem, password=None)
    assert stored.private_numbers() == key.private_numbers()
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert public == base64.b64encode(spki).decode()

    _, _, body = sandbox.request("GET", "/v2/email/identities/own.example")
    assert {
        "Name": "sel1._domainkey.own.example",
        "Type": "TXT",
        "Value": f"v=DKIM1; k=rsa; p={public}",
    } in body["DnsRecords"]


def test_dkim_signing_attributes_switch_both_ways(api_server, sandbox):
    client = sandbox.client
    client.create_email_identity(EmailIdentity="switch.example")
    _, encoded = rsa_key_b64(pem=True)
    answer = client.put_email_identity_dkim_signing_attributes(
        EmailIdentity="switch.example",
        SigningAttributesOrigin="EXTERNAL",
        SigningAttributes={
            "DomainSigningSelector": "mine",
            "DomainSigningPrivateKey": encoded,
        },
    )
    assert answer["DkimStatus"] == "PENDING" and answer["DkimTokens"] == ["mine"]
    got = client.get_email_identity(EmailIdentity="switch.example")["DkimAttributes"]
    assert got["SigningAttributesOrigin"] == "EXTERNAL"

    answer = client.put_email_identity_dkim_signing_attributes(
        EmailIdentity="switch.example", SigningAttributesOrigin="AWS_SES"
    )
    assert len(answer["DkimTokens"]) == 3 and "mine" not in answer["DkimTokens"]
    got = client.get_email_identity(EmailIdentity="switch.example")["DkimAttributes"]
    assert got["SigningAttributesOrigin"] == "AWS_SES"
    assert got["Tokens"] == answer["DkimTokens"]


def test_ed25519_key_and_the_old_v1_signing_path(api_server, sandbox):
    sandbox.client.create_email_identity(EmailIdentity="ed.example")
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    status, headers, body = sandbox.request(
        "PUT",
        "/v1/email/identities/ed.example/dkim/signing",
        {
            "SigningAttributesOrigin": "EXTERNAL",
            "SigningAttributes": {
                "DomainSigningSelector": "ed",
                "DomainSigningPrivateKey": base64.b64encode(der).decode(),
            },
        },
    )
    assert status == 200, body
    assert body == {"DkimStatus": "PENDING", "DkimTokens": ["ed"]}
    ((algorithm,),) = rows(
        api_server.settings,
        "select k.algorithm from dkim_keys k join identities i on i.id = k.identity_id"
        " where i.account_id = %s and i.name = 'ed.example'",
        sandbox.id,
    )
    assert algorithm == "ed25519-sha256"


@pytest.mark.parametrize(
    "attributes",
    [
        {"DomainSigningSelector": "s1"},
        {"DomainSigningSelector": "s1", "DomainSigningPrivateKey": "bm90IGEga2V5"},
        {
            "DomainSigningSelector": "s1",
            "DomainSigningPrivateKey": base64.b64encode(
                ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ).decode(),
        },
    ],
    ids=["no-key", "not-a-key", "ecdsa"],
)
def test_bad_byodkim_keys_are_refused(api_server, sandbox, attributes):
    with pytest.raises(sandbox.client.exceptions.BadRequestException):
        sandbox.client.create_email_identity(
            EmailIdentity="bad.example", DkimSigningAttributes=attributes
        )
    assert (
        rows(
            api_server.settings,
            "select name from identities where account_id = %s",
            sandbox.id,
        )
        == []
    )


def test_mail_from_domain(api_server, sandbox):
    client = sandbox.client
    client.create_email_identity(EmailIdentity="mf.example")
    client.put_email_identity_mail_from_attributes(
        EmailIdentity="mf.example",
        MailFromDomain="Bounce.MF.example",
        BehaviorOnMxFailure="USE_DEFAULT_VALUE",
    )
    got = client.get_email_identity(EmailIdentity="mf.example")["MailFromAttributes"]
    assert got == {
        "MailFromDomain": "bounce.mf.example",
        "MailFromDomainStatus": "PENDING",
        "BehaviorOnMxFailure": "USE_DEFAULT_VALUE",
    }
    with pytest.raises(client.exceptions.BadRequestException):
        client.put_email_identity_mail_from_attributes(
            EmailIdentity="mf.example", MailFromDomain="elsewhere.example"
        )
    with pytest.raises(client.exceptions.BadRequestException):
        client.put_email_identity_mail_from_attributes(
            EmailIdentity="mf.example",
            MailFromDomain="b.mf.example",
            BehaviorOnMxFailure="REJECT_MESSAGE",
        )
    client.put_email_identity_mail_from_attributes(EmailIdentity="mf.example")
    got = client.get_email_identity(EmailIdentity="mf.example")["MailFromAttributes"]
    assert got == {"BehaviorOnMxFailure": "USE_DEFAULT_VALUE"}
    with pytest.raises(client.exceptions.NotFoundException):
        client.put_email_identity_mail_from_attributes(
            EmailIdentity="none.example", MailFromDomain="a.none.example"
        )

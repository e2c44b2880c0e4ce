"""The SES v1 Query API driven by boto3's own ``ses`` client."""

from __future__ import annotations

import base64
import re

import psycopg
import pytest
from botocore.exceptions import ClientError

from tests.support.api_server import create_account, verify_identity


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = excinfo.value.response
    return (
        err["Error"]["Code"],
        err["Error"]["Message"],
        err["ResponseMetadata"]["HTTPStatusCode"],
    )


def count(settings, sql: str, *params) -> int:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchone()[0]


@pytest.fixture
def sandbox(api_server):
    account, creds = create_account(api_server.settings, "sandbox")
    return account, api_server.client(creds)


@pytest.fixture
def production(api_server):
    account, creds = create_account(api_server.settings, "prod", production=True)
    return account, api_server.client(creds)


def test_send_quota_of_a_new_sandbox_account(sandbox):
    _, ses = sandbox
    quota = ses.get_send_quota()
    assert quota["Max24HourSend"] == 200.0
    assert quota["MaxSendRate"] == 1.0
    assert quota["SentLast24Hours"] == 0.0


def test_unverified_source_is_rejected_with_ses_wording(api_server, production):
    account, ses = production
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="Sender <sender@example.com>",
            Destination={"ToAddresses": ["a@example.net"]},
            Message={"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}},
        )
    code, message, status = error_of(excinfo)
    assert (code, status) == ("MessageRejected", 400)
    assert message == (
        "Email address is not verified. The following identities failed the check"
        " in region US-EAST-1: Sender <sender@example.com>"
    )
    assert (
        count(
            api_server.settings,
            "select count(*) from messages where account_id = %s",
            account.id,
        )
        == 0
    )


def test_sandbox_requires_verified_recipients(api_server, sandbox):
    account, ses = sandbox
    verify_identity(api_server.settings, account.id, "example.com")
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": ["friend@example.net", "me@example.com"]},
            Message={"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}},
        )
    code, message, _ = error_of(excinfo)
    assert code == "MessageRejected"
    assert message.endswith("in region US-EAST-1: friend@example.net")
    verify_identity(api_server.settings, account.id, "friend@example.net")
    sent = ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["friend@example.net", "me@example.com"]},
        Message={"Subject": {"Data": "Hi"}, "Body": {"Text": {"Data": "Hello"}}},
    )
    assert re.fullmatch(r"0100[0-9a-f]{12}-[0-9a-f-]{36}-000000", sent["MessageId"])


def test_send_email_commits_message_and_recipients(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    sent = ses.send_email(
        Source="Sender <sender@example.com>",
        Destination={
            "ToAddresses": ["a@example.net"],
            "CcAddresses": ["b@example.net"],
            "BccAddresses": ["c@example.org"],
        },
        Message={
            "Subject": {"Data": "Grüße", "Charset": "UTF-8"},
            "Body": {"Text": {"Data": "plain"}, "Html": {"Data": "<p>html</p>"}},
        },
        ReplyToAddresses=["reply@example.com"],
        Tags=[{"Name": "campaign", "Value": "c1"}],
    )
    mid = sent["MessageId"]
    with psycopg.connect(api_server.settings.database_url) as conn:
        raw, n = conn.execute(
            "select raw, recipient_count from messages where id = %s", (mid,)
        ).fetchone()
        rcpts = sorted(
            r[0]
            for r in conn.execute(
                "select address from recipients where message_id = %s", (mid,)
            )
        )
        events = [
            r[0]
            for r in conn.execute(
                "select event_type from events where message_id = %s", (mid,)
            )
        ]
    raw = bytes(raw)
    assert n == 3 and rcpts == ["a@example.net", "b@example.net", "c@example.org"]
    assert events == ["send"]
    assert f"Message-ID: <{mid}@localhost>".encode() in raw
    assert b"\nBcc:" not in raw and b"c@example.org" not in raw
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert ses.get_send_quota()["SentLast24Hours"] == 3.0


def test_send_raw_email_takes_recipients_from_headers(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    raw = (
        b"From: Sender <sender@example.com>\r\nTo: a@example.net\r\nCc: b@example.net\r\n"
        b"Bcc: hidden@example.org\r\nSubject: raw\r\nX-SES-CONFIGURATION-SET: \r\n"
        b"X-SES-MESSAGE-TAGS: k=v\r\n\r\nBody line\nwith bare LF\r\n"
    )
    sent = ses.send_raw_email(RawMessage={"Data": raw})
    with psycopg.connect(api_server.settings.database_url) as conn:
        stored = bytes(
            conn.execute(
                "select raw from messages where id = %s", (sent["MessageId"],)
            ).fetchone()[0]
        )
        rcpts = sorted(
            r[0]
            for r in conn.execute(
                "select address from recipients where message_id = %s",
                (sent["MessageId"],),
            )
        )
    assert rcpts == ["a@example.net", "b@example.net", "hidden@example.org"]
    assert b"X-SES" not in stored.upper() and b"Bcc" not in stored
    assert b"Body line\r\nwith bare LF\r\n" in stored


def test_send_raw_email_from_unverified_header_is_rejected(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    raw = b"From: boss@evil.test\r\nTo: a@example.net\r\nSubject: x\r\n\r\nhi\r\n"
    with pytest.raises(ClientError) as excinfo:
        ses.send_raw_email(Source="sender@example.com", RawMessage={"Data": raw})
    code, message, _ = error_of(excinfo)
    assert code == "MessageRejected" and "boss@evil.test" in message


@pytest.mark.parametrize(
    "subject",
    ["a\r\nBcc: x@evil.test", "a\nb", "a\rb", "a\x00b"],
)
def test_header_injection_is_refused_and_leaves_no_row(api_server, production, subject):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": ["a@example.net"]},
            Message={"Subject": {"Data": subject}, "Body": {"Text": {"Data": "x"}}},
        )
    assert error_of(excinfo)[0] == "InvalidParameterValue"
    assert (
        count(
            api_server.settings,
            "select count(*) from messages where account_id = %s",
            account.id,
        )
        == 0
    )


def test_more_than_fifty_recipients_is_refused(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": [f"r{i}@example.net" for i in range(51)]},
            Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
        )
    assert error_of(excinfo)[0] == "InvalidParameterValue"


def test_rate_limit_admits_a_burst_then_throttles(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": [f"r{i}@example.net" for i in range(5)]},
        Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
    )
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": ["late@example.net"]},
            Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
        )
    assert error_of(excinfo) == ("Throttling", "Maximum sending rate exceeded.", 400)


def test_daily_quota_is_counted_in_recipients(api_server):
    account, creds = create_account(api_server.settings, "small", production=True)
    with psycopg.connect(api_server.settings.database_url, autocommit=True) as conn:
        conn.execute(
            "update accounts set max_24_hour_send = 3, max_send_rate = 100 where id = %s",
            (account.id,),
        )
    verify_identity(api_server.settings, account.id, "example.com")
    ses = api_server.client(creds)
    ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@example.net", "b@example.net"]},
        Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
    )
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": ["c@example.net", "d@example.net"]},
            Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
        )
    assert error_of(excinfo) == ("Throttling", "Daily message quota exceeded.", 400)


def test_paused_account_cannot_send(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    assert ses.get_account_sending_enabled()["Enabled"] is True
    ses.update_account_sending_enabled(Enabled=False)
    assert ses.get_account_sending_enabled()["Enabled"] is False
    with pytest.raises(ClientError) as excinfo:
        ses.send_email(
            Source="sender@example.com",
            Destination={"ToAddresses": ["a@example.net"]},
            Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
        )
    assert excinfo.value.__class__.__name__ == "AccountSendingPausedException"


def test_identities_lifecycle_and_paging(api_server, sandbox):
    account, ses = sandbox
    ses.verify_email_identity(EmailAddress="Alice@Example.com")
    ses.verify_email_address(EmailAddress="bob@example.com")
    token = ses.verify_domain_identity(Domain="example.org")["VerificationToken"]
    assert len(base64.b64decode(token)) == 32
    names = []
    page = ses.list_identities(MaxItems=2)
    names += page["Identities"]
    while "NextToken" in page:
        page = ses.list_identities(MaxItems=2, NextToken=page["NextToken"])
        names += page["Identities"]
    assert sorted(names) == ["alice@example.com", "bob@example.com", "example.org"]
    assert ses.list_identities(IdentityType="Domain")["Identities"] == ["example.org"]
    attrs = ses.get_identity_verification_attributes(
        Identities=["example.org", "bob@example.com"]
    )
    assert attrs["VerificationAttributes"]["example.org"] == {
        "VerificationStatus": "Pending",
        "VerificationToken": token,
    }
    assert (
        attrs["VerificationAttributes"]["bob@example.com"]["VerificationStatus"]
        == "Pending"
    )
    assert ses.list_verified_email_addresses()["VerifiedEmailAddresses"] == []
    ses.delete_verified_email_address(EmailAddress="bob@example.com")
    ses.delete_identity(Identity="example.org")
    assert ses.list_identities()["Identities"] == ["alice@example.com"]


def test_verification_mail_link_verifies_the_address_once(api_server, sandbox):
    import urllib.error
    import urllib.request

    account, ses = sandbox
    ses.verify_email_identity(EmailAddress="owner@example.com")
    with psycopg.connect(api_server.settings.database_url) as conn:
        raw = bytes(
            conn.execute(
                "select m.raw from messages m join recipients r on r.message_id = m.id"
                " where r.address = 'owner@example.com'"
            ).fetchone()[0]
        )
    links = re.findall(
        rb"http://127\.0\.0\.1:\d+/verify/[A-Za-z0-9_-]+", raw.replace(b"=\r\n", b"")
    )
    assert len(set(links)) == 1
    with urllib.request.urlopen(links[0].decode()) as resp:
        assert resp.status == 200
    assert ses.list_verified_email_addresses()["VerifiedEmailAddresses"] == [
        "owner@example.com"
    ]
    with pytest.raises(urllib.error.HTTPError) as excinfo:
        urllib.request.urlopen(links[0].decode())
    assert excinfo.value.code == 404


def test_identities_are_private_to_their_account(api_server, sandbox):
    _, ses = sandbox
    other, other_creds = create_account(api_server.settings, "other")
    other_ses = api_server.client(other_creds)
    ses.verify_domain_identity(Domain="mine.example.com")
    assert other_ses.list_identities()["Identities"] == []
    assert (
        other_ses.get_identity_verification_attributes(Identities=["mine.example.com"])[
            "VerificationAttributes"
        ]
        == {}
    )
    other_ses.delete_identity(Identity="mine.example.com")
    assert ses.list_identities()["Identities"] == ["mine.example.com"]


def test_verify_domain_dkim_returns_three_tokens(api_server, sandbox):
    _, ses = sandbox
    tokens = ses.verify_domain_dkim(Domain="example.org")["DkimTokens"]
    assert len(tokens) == 3 and len(set(tokens)) == 3
    attrs = ses.get_identity_dkim_attributes(Identities=["example.org"])[
        "DkimAttributes"
    ]["example.org"]
    assert attrs["DkimEnabled"] is True
    assert attrs["DkimVerificationStatus"] == "Pending"
    assert sorted(attrs["DkimTokens"]) == sorted(tokens)
    assert ses.verify_domain_dkim(Domain="example.org")["DkimTokens"] == tokens


def test_unknown_action_and_bad_signature(api_server, sandbox):
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    _, ses = sandbox
    creds = ses._request_signer._credentials
    req = AWSRequest(
        method="POST",
        url=api_server.url + "/",
        data=b"Action=Frobnicate&Version=2010-12-01",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    SigV4Auth(creds, "ses", "us-east-1").add_auth(req)
    prepared = req.prepare()
    r = urllib.request.Request(
        prepared.url, data=prepared.body, headers=dict(prepared.headers), method="POST"
    )
    try:
        urllib.request.urlopen(r)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        assert exc.code == 400 and "<Code>InvalidAction</Code>" in body
    else:
        raise AssertionError("unknown action accepted")
    bad = api_server.client(
        type(
            "C", (), {"access_key_id": creds.access_key, "secret_access_key": "x" * 40}
        )()
    )
    with pytest.raises(ClientError) as excinfo:
        bad.get_send_quota()
    assert error_of(excinfo)[:1] == ("SignatureDoesNotMatch",)
    unknown = api_server.client(
        type(
            "C",
            (),
            {"access_key_id": "AKIAAAAAAAAAAAAAAAAA", "secret_access_key": "x" * 40},
        )()
    )
    with pytest.raises(ClientError) as excinfo:
        unknown.get_send_quota()
    assert (
        error_of(excinfo)[0] == "InvalidClientTokenId" and error_of(excinfo)[2] == 403
    )


def test_send_statistics_counts_recipients(api_server, production):
    account, ses = production
    verify_identity(api_server.settings, account.id, "example.com")
    ses.send_email(
        Source="sender@example.com",
        Destination={"ToAddresses": ["a@example.net"]},
        Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}},
    )
    points = ses.get_send_statistics()["SendDataPoints"]
    assert sum(p["DeliveryAttempts"] for p in points) == 1
    other, other_creds = create_account(api_server.settings, "other")
    assert api_server.client(other_creds).get_send_statistics()["SendDataPoints"] == []

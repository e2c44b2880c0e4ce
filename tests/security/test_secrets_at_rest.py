"""No secret is stored or logged in plaintext after a representative run.

Real processes (``sesame api``, ``smtp``, ``scheduler``, ``worker``) log at DEBUG
while an account is made with the CLI, Easy DKIM and BYODKIM keys are created,
mail is sent over the API and over SMTP (AUTH PLAIN and LOGIN, right and wrong
passwords) and delivered DKIM-signed. Then every column of every table and every
line of every log is searched for the access secret, the SMTP password, AUTH
blobs, wrong passwords typed by a client and the DKIM private keys.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sesame import crypto
from tests.faults.harness import ROOT, Stack, open_stack
from tests.faults.scenarios import wait_until
from tests.support.api_server import verify_identity

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server is not installed"
    ),
]

WRONG_PASSWORD = "Wr0ngButSecret-" + "q" * 20


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sesame.cli", *args],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def clients(stack: Stack, created: dict[str, str]) -> tuple[Any, Any]:
    def make(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=stack.cluster.api_url,
            region_name="us-east-1",
            aws_access_key_id=created["AccessKeyId"],
            aws_secret_access_key=created["SecretAccessKey"],
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )

    return make("ses"), make("sesv2")


def smtp_session(stack: Stack) -> smtplib.SMTP:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client = smtplib.SMTP("127.0.0.1", stack.smtp_port, timeout=10)
    client.ehlo("client.example")
    client.starttls(context=context)
    client.ehlo("client.example")
    return client


def byodkim_key() -> tuple[str, list[str]]:
    """A caller's RSA key as SES takes it (base64 DER) and its PEM body lines."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return base64.b64encode(der).decode(), _pem_lines(pem)


def _pem_lines(pem: bytes) -> list[str]:
    """PEM lines that hold private numbers only.

    An RSA key's first lines encode its modulus, which the public key (stored
    and published on purpose) carries too; lines from the eleventh on hold the
    private exponent and primes.
    """
    lines = [
        line
        for line in pem.decode().splitlines()
        if line and not line.startswith("-----")
    ]
    return lines[10:-1]


def easy_dkim_keys(stack: Stack) -> list[str]:
    """Decrypt the Easy DKIM keys Sesame made, to look for them elsewhere."""
    data_dir = Path(stack.env["SESAME_DATA_DIR"])
    box = crypto.SecretBox(crypto.load_or_create_key(None, data_dir))
    lines: list[str] = []
    for selector, sealed in stack.query(
        "select selector, private_key_sealed from dkim_keys"
    ):
        lines += _pem_lines(box.open(bytes(sealed), selector.encode()))
    return lines


def database_values(stack: Stack) -> list[tuple[str, bytes]]:
    """Every non-null value of every column of every table, as bytes."""
    found: list[tuple[str, bytes]] = []
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "select table_name from information_schema.tables"
                " where table_schema = 'public' and table_type = 'BASE TABLE'"
            )
        ]
        for table in tables:
            cur = conn.execute(f'select * from "{table}"')
            names = [c.name for c in cur.description or []]
            for row in cur:
                for name, value in zip(names, row, strict=True):
                    if value is None:
                        continue
                    if isinstance(value, bytes | memoryview):
                        data = bytes(value)
                    elif isinstance(value, dict | list):
                        data = json.dumps(value).encode()
                    else:
                        data = str(value).encode()
                    found.append((f"{table}.{name}", data))
    return found


def test_no_secret_is_stored_or_logged_in_plaintext(tmp_path):
    with open_stack(
        workdir=tmp_path / "stack", settings={"SESAME_LOG_LEVEL": "DEBUG"}
    ) as stack:
        created = json.loads(
            cli(stack, "account", "create", "scan", "--production").stdout
        )
        account_id = created["AccountId"]
        cli_stderr = cli(stack, "account", "show", account_id).stderr
        with psycopg.connect(stack.database_url, autocommit=True) as conn:
            conn.execute(
                "update accounts set max_send_rate = 100, max_24_hour_send = 1e6"
                " where id = %s",
                (account_id,),
            )
        settings = _settings(stack)
        verify_identity(settings, account_id, "scan.example")
        verify_identity(settings, account_id, "byo.example")

        cluster = stack.cluster
        cluster.start_all(workers=1, smtp=True)
        cluster.wait_api()
        cluster.wait_port(stack.smtp_port)
        ses, sesv2 = clients(stack, created)

        ses.verify_domain_dkim(Domain="scan.example")
        stack.query(
            "update identities set dkim_status = 'success' where name = 'scan.example'"
            " returning 1"
        )
        byo_key, byo_lines = byodkim_key()
        sesv2.put_email_identity_dkim_signing_attributes(
            EmailIdentity="byo.example",
            SigningAttributesOrigin="EXTERNAL",
            SigningAttributes={
                "DomainSigningSelector": "byo",
                "DomainSigningPrivateKey": byo_key,
            },
        )
        ses.verify_email_identity(EmailAddress="someone@inbox.test")
        for source in ("sender@scan.example", "sender@byo.example"):
            ses.send_email(
                Source=source,
                Destination={"ToAddresses": ["reader@dest.test"]},
                Message={"Subject": {"Data": "hi"}, "Body": {"Text": {"Data": "b"}}},
            )

        user, password = created["SmtpUsername"], created["SmtpPassword"]
        plain_blob = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        wrong_blob = base64.b64encode(f"\0{user}\0{WRONG_PASSWORD}".encode()).decode()
        client = smtp_session(stack)
        assert client.docmd("AUTH", f"PLAIN {wrong_blob}")[0] == 535
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd(base64.b64encode(user.encode()).decode())[0] == 334
        assert client.docmd(base64.b64encode(WRONG_PASSWORD.encode()).decode())[0] == (
            535
        )
        assert client.docmd("AUTH", f"PLAIN {plain_blob}")[0] == 235
        client.sendmail(
            "sender@scan.example",
            ["reader@dest.test"],
            b"From: sender@scan.example\r\nTo: reader@dest.test\r\nSubject: s\r\n\r\nb\r\n",
        )
        client.quit()
        client = smtp_session(stack)
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd(base64.b64encode(user.encode()).decode())[0] == 334
        assert client.docmd(base64.b64encode(password.encode()).decode())[0] == 235
        client.quit()

        assert wait_until(lambda: stack.sink.delivered() >= 3, timeout=60)
        easy_lines = easy_dkim_keys(stack)
        assert easy_lines
        values = database_values(stack)
        cluster.stop()
        logs = {path.name: path.read_bytes() for path in stack.workdir.glob("*.log")}
        logs["cli stderr"] = cli_stderr.encode()

    needles = {
        "SecretAccessKey": created["SecretAccessKey"],
        "SmtpPassword": password,
        "SMTP password in base64 (AUTH LOGIN)": base64.b64encode(
            password.encode()
        ).decode(),
        "AUTH PLAIN blob": plain_blob,
        "wrong password typed by a client": WRONG_PASSWORD,
        "wrong password in base64": base64.b64encode(WRONG_PASSWORD.encode()).decode(),
        "wrong AUTH PLAIN blob": wrong_blob,
        "BYODKIM key as sent": byo_key[40:120],
        **{f"BYODKIM key line {i}": line for i, line in enumerate(byo_lines[:3])},
        **{f"Easy DKIM key line {i}": line for i, line in enumerate(easy_lines[:6])},
        "a PEM private key": "PRIVATE KEY-----",
    }
    found = [
        f"{what} in {where}"
        for where, data in values
        for what, needle in needles.items()
        if needle.encode() in data
    ]
    found += [
        f"{what} in log {name}"
        for name, data in logs.items()
        for what, needle in needles.items()
        if needle.encode() in data
    ]
    assert found == []
    assert sum(len(d) for d in logs.values()) > 1000  # DEBUG logging did run


def _settings(stack: Stack) -> Any:
    from sesame.settings import Settings

    return Settings(
        database_url=stack.database_url,
        redis_url=stack.redis.url,
        data_dir=Path(stack.env["SESAME_DATA_DIR"]),
    )


def test_secret_key_file_is_private(tmp_path):
    key_dir = tmp_path / "data"
    crypto.load_or_create_key(None, key_dir)
    assert oct(os.stat(key_dir / "secret.key").st_mode & 0o777) == "0o600"

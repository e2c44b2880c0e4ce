"""Many processes, one PostgreSQL and one Redis: the quota holds, mail goes out once.

Two ``sesame api`` (one uvicorn worker each), two ``sesame smtp``, three
``sesame worker`` and one ``sesame scheduler``, each with its own data
directory as if on its own host, sharing only the stores and the secret key.
An account with a 50-recipient daily quota sends 80 one-recipient messages
through all four front ends at once: exactly 50 are accepted, the rest are
refused (Throttling / 454), and the loopback sink receives each accepted
recipient exactly once. Each lone component serves its own metrics, which
agree with what happened.
"""

from __future__ import annotations

import base64
import os
import smtplib
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.ops.conftest import (
    Processes,
    port,
    sesame,
    sesame_env,
    verify_domain,
    wait_until_http,
    wait_until_listening,
)
from tests.support.smtp_sink import SmtpSink

QUOTA = 50
PER_CHANNEL = 20  # four channels: 80 sends for a quota of 50
SOURCE = "shop@example.com"


@pytest.mark.timeout(300)
def test_quota_and_exactly_once_delivery_across_processes(
    ops_database: str,
    ops_redis: str,
    processes: Processes,
    smtp_sink: SmtpSink,
    tmp_path: Path,
) -> None:
    secret = base64.b64encode(os.urandom(32)).decode()

    def env(name: str, **settings: Any) -> dict[str, str]:
        return sesame_env(
            ops_database,
            ops_redis,
            tmp_path / name,  # a data directory per process, as per host
            secret_key=secret,
            smarthost=f"{smtp_sink.host}:{smtp_sink.port}",
            hostname="mx.sesame.test",
            sweep_seconds=1,
            workers=3,
            # Small batches, so the three workers share the work.
            dispatch_batch_size=5,
            metrics_account_seconds=1,
            **settings,
        )

    admin = env("admin")
    created = sesame(admin, "account", "create", "many", "--production")
    account = created["AccountId"]
    sesame(
        admin,
        "account",
        "set-quota",
        account,
        "--max-24-hour-send",
        str(QUOTA),
        "--max-send-rate",
        "1000",
    )
    verify_domain(ops_database, account, "example.com")

    apis = [port(), port()]
    smtps = [(port(), port()), (port(), port())]
    metrics: dict[str, int] = {}
    for i, api in enumerate(apis):
        processes.start(f"api-{i}", env(f"api-{i}", api_port=api, api_workers=1), "api")
    for i, (plain, implicit) in enumerate(smtps):
        metrics[f"smtp-{i}"] = port()
        processes.start(
            f"smtp-{i}",
            env(
                f"smtp-{i}",
                smtp_port=plain,
                smtps_port=implicit,
                metrics_port=metrics[f"smtp-{i}"],
            ),
            "smtp",
        )
    for i in range(3):
        metrics[f"worker-{i}"] = port()
        processes.start(
            f"worker-{i}",
            env(f"worker-{i}", metrics_port=metrics[f"worker-{i}"]),
            "worker",
        )
    metrics["scheduler"] = port()
    processes.start(
        "scheduler", env("scheduler", metrics_port=metrics["scheduler"]), "scheduler"
    )
    for api in apis:
        wait_until_http(f"http://127.0.0.1:{api}/readyz", processes)
    for plain, implicit in smtps:
        wait_until_listening("127.0.0.1", plain, processes)
        wait_until_listening("127.0.0.1", implicit, processes)
    for metrics_port in metrics.values():
        wait_until_http(f"http://127.0.0.1:{metrics_port}/metrics", processes)

    accepted: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def record(address: str, ok: bool) -> None:
        with lock:
            (accepted if ok else refused).append(address)

    def via_api(index: int, api: int) -> None:
        ses = boto3.client(
            "ses",
            endpoint_url=f"http://127.0.0.1:{api}",
            region_name="us-east-1",
            aws_access_key_id=created["AccessKeyId"],
            aws_secret_access_key=created["SecretAccessKey"],
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )
        for n in range(PER_CHANNEL):
            address = f"api{index}-{n}@dest.test"
            try:
                ses.send_email(
                    Source=SOURCE,
                    Destination={"ToAddresses": [address]},
                    Message={
                        "Subject": {"Data": "Quota"},
                        "Body": {"Text": {"Data": "Across processes."}},
                    },
                )
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "Throttling", exc.response
                record(address, False)
            else:
                record(address, True)

    def via_smtp(index: int, plain: int, implicit: int) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client: smtplib.SMTP
        if index == 0:  # one server over STARTTLS, the other over implicit TLS
            client = smtplib.SMTP("127.0.0.1", plain, timeout=30)
            client.starttls(context=context)
        else:
            client = smtplib.SMTP_SSL(
                "127.0.0.1", implicit, timeout=30, context=context
            )
        with client:
            client.login(created["SmtpUsername"], created["SmtpPassword"])
            for n in range(PER_CHANNEL):
                address = f"smtp{index}-{n}@dest.test"
                mail = EmailMessage()
                mail["From"] = SOURCE
                mail["To"] = address
                mail["Subject"] = "Quota"
                mail.set_content("Across processes.")
                try:
                    client.send_message(mail)
                except smtplib.SMTPDataError as exc:
                    assert exc.smtp_code == 454, exc
                    record(address, False)
                else:
                    record(address, True)

    def guarded(run: Callable[..., None], *args: Any) -> Callable[[], None]:
        def go() -> None:
            try:
                run(*args)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        return go

    threads = [
        threading.Thread(target=guarded(via_api, i, api)) for i, api in enumerate(apis)
    ] + [
        threading.Thread(target=guarded(via_smtp, i, plain, implicit))
        for i, (plain, implicit) in enumerate(smtps)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, f"{errors}\n{processes.logs()}"
    assert len(accepted) + len(refused) == 4 * PER_CHANNEL
    assert len(accepted) == QUOTA, (len(accepted), processes.logs())

    # Every accepted recipient arrives once; give duplicates time to show up.
    smtp_sink.wait_for(QUOTA, timeout=60)
    time.sleep(3)
    arrived = Counter(r for m in smtp_sink.messages for r in m.rcpt_tos)
    assert set(arrived) == set(accepted)
    assert set(arrived.values()) == {1}, {a: n for a, n in arrived.items() if n > 1}
    with psycopg.connect(ops_database) as conn:
        states = dict(
            conn.execute(
                "select state, count(*) from recipients group by state"
            ).fetchall()
        )
    assert states == {"delivered": QUOTA}
    processes.check_alive()

    # Each lone process exposes its own metrics; together they tell the same story.
    def total(name: str, url_ports: list[int], **labels: str) -> float:
        found = 0.0
        for metrics_port in url_ports:
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name and labels.items() <= sample.labels.items():
                        found += sample.value
        return found

    api_accepted = sum(1 for a in accepted if a.startswith("api"))
    smtp_accepted = QUOTA - api_accepted
    assert (
        total("sesame_api_requests_total", apis, action="SendEmail", outcome="Success")
        == api_accepted
    )
    assert (
        total(
            "sesame_api_requests_total", apis, action="SendEmail", outcome="Throttling"
        )
        == 2 * PER_CHANNEL - api_accepted
    )
    smtp_ports = [metrics["smtp-0"], metrics["smtp-1"]]
    assert total("sesame_smtp_messages_accepted_total", smtp_ports) == smtp_accepted
    assert (
        total("sesame_smtp_rejections_total", smtp_ports, reason="throttled")
        == 2 * PER_CHANNEL - smtp_accepted
    )
    workers = [metrics[f"worker-{i}"] for i in range(3)]
    assert total("sesame_recipients_total", workers, outcome="delivered") == QUOTA
    per_worker = [
        total("sesame_recipients_total", [w], outcome="delivered") for w in workers
    ]
    print(f"accepted api={api_accepted} smtp={smtp_accepted}; per worker {per_worker}")
    deadline = time.monotonic() + 30
    while (
        total("sesame_account_quota_sent_recipients", [metrics["scheduler"]]) != QUOTA
    ):
        assert time.monotonic() < deadline, "scheduler never sampled the quota use"
        time.sleep(0.5)

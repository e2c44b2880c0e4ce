"""The relay: routing, envelopes, retries, give-up, leases and refused addresses."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid

import pytest

from mta import configuration_sets
from tests.webhooks.conftest import add_destination, insert_message, query
from workers import webhooks


def deliveries(settings, *columns: str):
    return query(
        settings,
        f"select {', '.join(columns)} from webhook_deliveries order by id",
    )


def make_due(settings) -> None:
    """Skip the backoff wait: what the clock would do, done in the database."""
    query(
        settings,
        "update webhook_deliveries set next_attempt_at = now() where state = 'pending'",
    )


async def test_configuration_set_destinations_get_only_their_sets_mail(
    runtime, settings, account_id, consumer
):
    query(
        settings,
        "insert into configuration_sets (account_id, name) values (%s, 'marketing')",
        account_id,
    )
    await add_destination(
        runtime, account_id, consumer.url + "/set", configuration_set="marketing"
    )
    await add_destination(runtime, account_id, consumer.url + "/all", name="all")
    in_set, _ = insert_message(
        settings,
        account_id,
        ["a@example.net"],
        configuration_set="marketing",
        tags={"campaign": "spring"},
    )
    plain, _ = insert_message(settings, account_id, ["b@example.net"])

    assert await webhooks.relay_due(runtime) == 3
    by_path: dict[str, list[str]] = {}
    for request in consumer.requests:
        by_path.setdefault(request.path, []).append(request.json()["mail"]["messageId"])
    assert by_path["/hooks/ses/set"] == [in_set]
    assert sorted(by_path["/hooks/ses/all"]) == sorted([in_set, plain])
    tagged = next(e for e in consumer.events() if e["mail"]["messageId"] == in_set)
    assert tagged["mail"]["tags"] == {
        "ses:configuration-set": ["marketing"],
        "ses:from-domain": ["example.com"],
        "campaign": ["spring"],
    }


async def test_sns_envelope_wraps_the_event_as_a_string(
    runtime, settings, account_id, consumer
):
    destination_id, secret = await add_destination(
        runtime, account_id, consumer.url, ["send"], name="topic", sns=True
    )
    message_id, _ = insert_message(settings, account_id, ["a@example.net"])
    await webhooks.relay_due(runtime)

    [request] = consumer.requests
    assert webhooks.verify_signature(
        secret, request.headers["x-sesame-signature"], request.body
    )
    notification = request.json()
    assert set(notification) == {
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
    }
    assert notification["Type"] == "Notification"
    assert notification["TopicArn"] == f"arn:aws:sns:us-east-1:{account_id}:topic"
    assert notification["Timestamp"].endswith("Z")
    assert isinstance(notification["Message"], str)
    inner = json.loads(notification["Message"])
    assert inner["eventType"] == "Send"
    assert inner["mail"]["messageId"] == message_id
    assert notification["MessageId"] == str(
        uuid.uuid5(webhooks._SNS_NAMESPACE, f"{inner['eventId']}:{destination_id}")
    )
    assert request.headers["x-amz-sns-message-type"] == "Notification"
    assert request.headers["x-amz-sns-message-id"] == notification["MessageId"]
    assert request.headers["x-amz-sns-topic-arn"] == notification["TopicArn"]


async def test_identity_topics_get_their_identity_mail_as_notifications(
    runtime, settings, account_id, consumer
):
    async with runtime.pool.connection() as conn:
        for identity, path in (("example.com", "/domain"), ("VIP@example.com", "/vip")):
            await configuration_sets.set_identity_notification(
                conn, account_id, identity, "Delivery", consumer.url + path
            )
    sent = {
        "shop": insert_message(settings, account_id, ["a@example.net"]),
        "vip": insert_message(
            settings, account_id, ["b@example.net"], source="VIP <vip@Example.com>"
        ),
        "other": insert_message(
            settings, account_id, ["c@example.net"], source="news@other.example"
        ),
    }
    for message_id, [recipient_id] in sent.values():
        query(
            settings,
            "insert into events (account_id, message_id, recipient_id, event_type,"
            " recipient, detail) select %s, %s, id, 'delivery', address, %s"
            " from recipients where id = %s",
            account_id,
            message_id,
            json.dumps({"smtpResponse": "250 2.0.0 Ok", "reportingMTA": "mx"}),
            recipient_id,
        )

    # Only mail from each topic's identity, the address's own topic over its
    # domain's, and only the Delivery events (no Send).
    assert await webhooks.relay_due(runtime) == 2
    received = {r.path: json.loads(r.json()["Message"]) for r in consumer.requests}
    assert set(received) == {"/hooks/ses/domain", "/hooks/ses/vip"}
    domain, vip = received["/hooks/ses/domain"], received["/hooks/ses/vip"]
    assert domain["mail"]["messageId"] == sent["shop"][0]
    assert vip["mail"]["messageId"] == sent["vip"][0]
    # SES notification contents: notificationType, no eventId, no mail tags.
    assert set(domain) == {"notificationType", "mail", "delivery"}
    assert domain["notificationType"] == "Delivery"
    assert "tags" not in domain["mail"]
    assert domain["delivery"]["recipients"] == ["a@example.net"]


async def test_a_failing_consumer_is_retried_with_backoff_then_succeeds(
    runtime, settings, account_id, consumer
):
    _, secret = await add_destination(runtime, account_id, consumer.url, ["send"])
    insert_message(settings, account_id, ["a@example.net"])
    consumer.statuses = [500, 503]

    assert await webhooks.relay_due(runtime) == 1
    [(state, attempts, status, error, wait)] = deliveries(
        settings,
        "state",
        "attempts",
        "last_status",
        "last_error",
        "extract(epoch from next_attempt_at - now())",
    )
    assert (state, attempts, status, error) == ("pending", 1, 500, "HTTP 500")
    assert 9 <= wait <= 11.1  # 10 s, plus up to 10 % jitter
    # Not due yet: nothing is sent before the backoff has passed.
    assert await webhooks.relay_due(runtime) == 0

    make_due(settings)
    assert await webhooks.relay_due(runtime) == 1
    [(attempts, status, wait)] = deliveries(
        settings,
        "attempts",
        "last_status",
        "extract(epoch from next_attempt_at - now())",
    )
    assert (attempts, status) == (2, 503)
    assert 19 <= wait <= 22.1  # doubled

    make_due(settings)
    assert await webhooks.relay_due(runtime) == 1
    assert deliveries(settings, "state", "attempts", "last_status", "last_error") == [
        ("delivered", 3, 200, None)
    ]
    # Every attempt carried the same event, id and body: consumers dedupe on it.
    assert [r.headers["x-sesame-delivery-attempt"] for r in consumer.requests] == [
        "1",
        "2",
        "3",
    ]
    assert len({r.event_id for r in consumer.requests}) == 1
    assert len({r.body for r in consumer.requests}) == 1
    for request in consumer.requests:
        assert webhooks.verify_signature(
            secret, request.headers["x-sesame-signature"], request.body
        )


async def test_retry_after_is_honoured(runtime, settings, account_id, consumer):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    insert_message(settings, account_id, ["a@example.net"])
    consumer.statuses = [429]
    consumer.retry_after = "120"
    await webhooks.relay_due(runtime)
    [(wait,)] = deliveries(settings, "extract(epoch from next_attempt_at - now())")
    assert 118 <= wait <= 121


def test_the_retry_schedule_doubles_to_hourly_and_lasts_a_day():
    delays = [webhooks.retry_delay(n) for n in range(1, 40)]
    assert 10 <= delays[0] <= 11 and 20 <= delays[1] <= 22
    assert all(
        b >= a or b == webhooks.RETRY_MAX_SECONDS for a, b in itertools.pairwise(delays)
    )
    assert max(delays) == webhooks.RETRY_MAX_SECONDS
    elapsed, attempts = 0.0, 1
    while elapsed < webhooks.GIVE_UP_SECONDS:
        elapsed += webhooks.retry_delay(attempts)
        attempts += 1
    assert 25 <= attempts <= 40  # tries enough, and not too many, in a day


async def test_a_delivery_failing_for_a_day_is_marked_failed(
    runtime, settings, account_id, consumer
):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    insert_message(settings, account_id, ["a@example.net"])
    insert_message(settings, account_id, ["b@example.net"])
    consumer.default_status = 503
    # One delivery has been failing for a day, the other for 23 hours.
    query(
        settings,
        "update webhook_deliveries set created_at = now() - case"
        " when id = (select min(id) from webhook_deliveries)"
        " then interval '24 hours 1 minute' else interval '23 hours' end",
    )
    assert await webhooks.relay_due(runtime) == 2
    assert deliveries(settings, "state", "last_status") == [
        ("failed", 503),
        ("pending", 503),
    ]
    make_due(settings)
    consumer.default_status = 200
    assert await webhooks.relay_due(runtime) == 1  # failed rows are left alone
    assert deliveries(settings, "state") == [("failed",), ("delivered",)]


async def test_a_killed_relay_redelivers_and_the_consumer_can_dedupe(
    runtime, settings, account_id, consumer
):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    insert_message(settings, account_id, ["a@example.net"])
    consumer.hold = threading.Event()

    relay = asyncio.ensure_future(webhooks.relay_due(runtime))
    await consumer.wait_for(1)
    relay.cancel()  # killed mid-request: no outcome written
    with pytest.raises(asyncio.CancelledError):
        await relay
    [(state, attempts, leased)] = deliveries(
        settings, "state", "attempts", "lease_until > now() + interval '1 minute'"
    )
    assert (state, attempts, leased) == ("pending", 1, True)
    # Still leased: another relay leaves it alone.
    assert await webhooks.relay_due(runtime) == 0

    # The lease runs out (done here in the database rather than by waiting).
    query(
        settings,
        "update webhook_deliveries set lease_until = now(), next_attempt_at = now()",
    )
    consumer.hold.set()
    assert await webhooks.relay_due(runtime) == 1
    assert deliveries(settings, "state", "attempts") == [("delivered", 2)]
    assert len(consumer.requests) == 2
    first, second = consumer.requests
    assert first.event_id == second.event_id and first.body == second.body
    seen = {r.event_id for r in consumer.requests}  # what a consumer dedupes on
    assert len(seen) == 1


async def test_a_stale_relay_cannot_overwrite_a_newer_attempt(
    runtime, settings, account_id, consumer
):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    insert_message(settings, account_id, ["a@example.net"])
    [claim] = await webhooks._claim(runtime, 10)
    # The lease ran out and another relay claimed and delivered the row.
    query(settings, "update webhook_deliveries set next_attempt_at = now()")
    assert await webhooks.relay_due(runtime) == 1
    await webhooks._record(
        runtime, claim, webhooks._Outcome(False, status=500, error="HTTP 500")
    )
    assert deliveries(settings, "state", "attempts", "last_status") == [
        ("delivered", 2, 200)
    ]


async def test_a_link_local_url_is_refused_without_a_request(
    runtime, settings, account_id, consumer
):
    with pytest.raises(webhooks.UrlRefused):
        await add_destination(
            runtime, account_id, "http://169.254.169.254/latest/meta-data"
        )
    # A row written some other way is refused by the relay as well, for good.
    query(
        settings,
        "insert into event_destinations (account_id, name, matching_event_types, url)"
        " values (%s, 'metadata', '{send}', 'http://169.254.169.254/latest')",
        account_id,
    )
    insert_message(settings, account_id, ["a@example.net"])
    assert await webhooks.relay_due(runtime) == 1
    [(state, status, error)] = deliveries(
        settings, "state", "last_status", "last_error"
    )
    assert (state, status) == ("failed", None)
    assert error.startswith("refused:") and "link-local" in error


async def test_a_name_resolving_to_link_local_is_refused_and_retried(
    runtime, settings, account_id, consumer, monkeypatch
):
    port = consumer.url.split(":")[2].split("/")[0]
    resolved: dict[str, list[str]] = {"hooks.test": ["169.254.169.254"]}

    async def resolve(host: str, port: int) -> list[str]:
        return resolved[host]

    monkeypatch.setattr(webhooks, "_resolve", resolve)
    await add_destination(
        runtime, account_id, f"http://hooks.test:{port}/hooks/ses", ["send"]
    )
    insert_message(settings, account_id, ["a@example.net"])
    await webhooks.relay_due(runtime)
    [(state, error)] = deliveries(settings, "state", "last_error")
    assert state == "pending" and error.startswith("refused:")
    assert consumer.requests == []

    # DNS changed: the relay connects to the checked address, Host unchanged.
    resolved["hooks.test"] = ["127.0.0.1"]
    make_due(settings)
    await webhooks.relay_due(runtime)
    assert deliveries(settings, "state") == [("delivered",)]
    assert consumer.requests[0].headers["host"] == f"hooks.test:{port}"


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("169.254.169.254", True),
        ("169.254.1.1", True),
        ("0.0.0.0", True),
        ("100.100.100.200", True),
        ("255.255.255.255", True),
        ("224.0.0.1", True),
        ("fe80::1", True),
        ("fd00:ec2::254", True),
        ("::ffff:169.254.169.254", True),
        ("64:ff9b::a9fe:a9fe", True),
        ("::", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("192.168.1.10", False),
        ("203.0.113.7", False),
        ("2001:db8::1", False),
    ],
)
def test_refused_addresses(address, refused):
    import ipaddress

    assert webhooks.refused_address(ipaddress.ip_address(address)) is refused


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "http:///nohost",
        "http://[fe80::1]/x",
        "not a url",
    ],
)
def test_check_url_refuses(url):
    with pytest.raises(webhooks.UrlRefused):
        webhooks.check_url(url)


async def test_disabled_destinations_and_unreadable_secrets_are_not_sent(
    runtime, settings, account_id, consumer
):
    disabled, _ = await add_destination(runtime, account_id, consumer.url, ["send"])
    moved, _ = await add_destination(
        runtime, account_id, consumer.url, ["send"], name="moved"
    )
    insert_message(settings, account_id, ["a@example.net"])
    query(
        settings,
        "update event_destinations set enabled = false where id = %s",
        disabled,
    )
    # A secret sealed for another row does not open here; never send unsigned.
    query(
        settings,
        "update event_destinations set signing_secret_sealed ="
        " (select signing_secret_sealed from event_destinations where id = %s)"
        " where id = %s",
        disabled,
        moved,
    )
    assert await webhooks.relay_due(runtime) == 2
    assert consumer.requests == []
    assert sorted(deliveries(settings, "state", "last_error")) == [
        ("failed", "destination disabled"),
        ("failed", "destination unreadable: its signing secret does not open"),
    ]


async def test_a_batch_goes_out_concurrently(runtime, settings, account_id, consumer):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    for n in range(30):
        insert_message(settings, account_id, [f"r{n}@example.net"])
    assert await webhooks.relay_due(runtime, limit=20) == 20
    assert await webhooks.relay_due(runtime, limit=20) == 10
    assert len({r.event_id for r in consumer.requests}) == 30
    assert set(deliveries(settings, "state")) == {("delivered",)}


async def test_an_unreachable_consumer_is_retried(runtime, settings, account_id):
    from tests.support.api_server import free_port

    await add_destination(
        runtime, account_id, f"http://127.0.0.1:{free_port()}/gone", ["send"]
    )
    insert_message(settings, account_id, ["a@example.net"])
    assert await webhooks.relay_due(runtime) == 1
    [(state, status, error)] = deliveries(
        settings, "state", "last_status", "last_error"
    )
    assert (state, status) == ("pending", None)
    assert error.startswith("ConnectError")


async def test_an_event_that_cannot_be_rendered_fails_alone(
    runtime, settings, account_id, consumer, monkeypatch
):
    await add_destination(runtime, account_id, consumer.url, ["send"])
    bad, _ = insert_message(settings, account_id, ["a@example.net"])
    good, _ = insert_message(settings, account_id, ["b@example.net"])
    render = webhooks.events.render

    def broken(event, message, **kwargs):
        if event.message_id == bad:
            raise RuntimeError("a bug")
        return render(event, message, **kwargs)

    monkeypatch.setattr(webhooks.events, "render", broken)
    assert await webhooks.relay_due(runtime) == 2
    assert [e["mail"]["messageId"] for e in consumer.events()] == [good]
    assert deliveries(settings, "state", "last_error") == [
        ("failed", "payload failed: RuntimeError"),
        ("delivered", None),
    ]

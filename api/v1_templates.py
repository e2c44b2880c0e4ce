"""SES v1 template actions: stored templates, test rendering and templated sends.

A send whose template cannot be rendered with its data is accepted, as in SES:
the caller gets a MessageId, nothing is delivered, and a rendering_failure
event is recorded for the event destinations.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api import sending, v1, xml
from api.errors import ApiError, invalid, missing
from api.query import Params
from mta import identities, templates
from mta.accept import AcceptError, Acceptor, StoreUnavailable, Submission
from mta.configuration_sets import ConfigurationSet
from mta.templates import TemplateError
from sesame import ids
from sesame.accounts import Account
from sesame.ids import MessageId
from sesame.runtime import Runtime

# SES's SendBulkTemplatedEmail takes at most 50 destinations per call.
MAX_BULK_DESTINATIONS = 50
# SES v1 ListTemplates: 10 per page unless asked, at most 100.
DEFAULT_TEMPLATE_PAGE = 10
MAX_TEMPLATE_PAGE = 100


# -- templated sends, shared with SES v2 --------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """Who a templated message is from and to, as the caller wrote them."""

    source: str
    to: Sequence[str]
    cc: Sequence[str]
    bcc: Sequence[str]
    reply_to: Sequence[str] = ()
    return_path: str | None = None


async def load_template(
    runtime: Runtime, account: Account, name: str
) -> templates.Compiled:
    """Return a stored template, parsed; raise TemplateDoesNotExist or InvalidTemplate."""
    async with runtime.pool.connection() as conn:
        found = await templates.get_template(conn, account.id, name)
    if found is None:
        raise template_does_not_exist(name)
    try:
        return templates.compile_template(found.subject, found.text, found.html)
    except TemplateError as exc:
        raise ApiError(exc.code, exc.message) from None


async def send_templated(
    runtime: Runtime,
    acceptor: Acceptor,
    account: Account,
    *,
    envelope: Envelope,
    template_name: str,
    template: templates.Compiled,
    data: dict[str, Any],
    configuration: ConfigurationSet | None,
    tags: dict[str, str],
) -> MessageId:
    """Render a template for one destination and accept the message.

    Raises ApiError or AcceptError when the send is refused; a rendering failure
    is not refused but recorded (see the module docstring).
    """
    try:
        rendered = template.render(data)
    except TemplateError as exc:
        return await _rendering_failed(
            runtime,
            acceptor,
            account,
            envelope,
            template_name,
            configuration,
            tags,
            exc,
        )
    submission = await sending.simple_submission(
        runtime,
        account,
        source=envelope.source,
        to=envelope.to,
        cc=envelope.cc,
        bcc=envelope.bcc,
        reply_to=envelope.reply_to,
        content=sending.SimpleContent(
            subject=rendered.subject or "",
            subject_charset="UTF-8",
            text=rendered.text,
            text_charset="UTF-8",
            html=rendered.html,
            html_charset="UTF-8",
        ),
        return_path=envelope.return_path,
        tags=tags,
    )
    _apply(submission, configuration)
    return await acceptor.accept(submission)


def _apply(submission: Submission, configuration: ConfigurationSet | None) -> None:
    """Put a resolved configuration set on a Submission."""
    if configuration is not None:
        submission.configuration_set = configuration.name
        submission.max_delivery_seconds = configuration.max_delivery_seconds


async def _rendering_failed(
    runtime: Runtime,
    acceptor: Acceptor,
    account: Account,
    envelope: Envelope,
    template_name: str,
    configuration: ConfigurationSet | None,
    tags: dict[str, str],
    error: TemplateError,
) -> MessageId:
    # Build the message as if it had rendered to nothing, so addresses, sizes
    # and identities are checked exactly as for a message that is sent.
    submission = await sending.simple_submission(
        runtime,
        account,
        source=envelope.source,
        to=envelope.to,
        cc=envelope.cc,
        bcc=envelope.bcc,
        reply_to=envelope.reply_to,
        content=sending.SimpleContent(subject="", text=""),
        return_path=envelope.return_path,
        tags=tags,
    )
    await _check_sendable(runtime, acceptor, account, submission)
    async with runtime.pool.connection() as conn:
        await templates.record_rendering_failure(
            conn,
            account_id=account.id,
            message_id=submission.message_id,
            source=submission.source,
            from_domain=submission.from_domain,
            destination=[written for _, written in submission.recipients],
            configuration_set=configuration.name if configuration else None,
            tags=tags,
            template_name=template_name,
            error=error,
        )
    return submission.message_id


async def _check_sendable(
    runtime: Runtime, acceptor: Acceptor, account: Account, submission: Submission
) -> None:
    """Refuse what the accept path would refuse before quota: pause, identities."""
    if not account.can_send:
        raise AcceptError("AccountSendingPausedException", "Account is paused.")
    verified = await acceptor.verified_names(account.id)
    pairs = list(submission.senders)
    if not account.production:
        pairs += submission.recipients
    failed = [w for address, w in pairs if not identities.covered(address, verified)]
    if failed:
        listed = ", ".join(failed[:10]) + (", ..." if len(failed) > 10 else "")
        raise AcceptError(
            "MessageRejected",
            "Email address is not verified. The following identities failed the"
            f" check in region {runtime.settings.region.upper()}: {listed}",
        )


def template_does_not_exist(name: str) -> ApiError:
    return ApiError("TemplateDoesNotExist", f"Template {name} does not exist.")


def parse_data(text: str) -> dict[str, Any]:
    """Parse TemplateData; raise InvalidRenderingParameter."""
    try:
        return templates.parse_data(text)
    except TemplateError as exc:
        raise ApiError(exc.code, exc.message) from None


# -- sending ----------------------------------------------------------------


async def send_templated_email(call: v1.Call) -> str | None:
    p = call.params
    envelope = Envelope(
        source=p.require("Source"),
        to=p.members("Destination.ToAddresses"),
        cc=p.members("Destination.CcAddresses"),
        bcc=p.members("Destination.BccAddresses"),
        reply_to=p.members("ReplyToAddresses"),
        return_path=p.get("ReturnPath"),
    )
    name = p.require("Template")
    data = parse_data(p.require("TemplateData"))
    tags = v1._tags(p)
    configuration = await sending.resolve_configuration_set(
        call.runtime, call.account, p.get("ConfigurationSetName")
    )
    template = await load_template(call.runtime, call.account, name)
    message_id = await send_templated(
        call.runtime,
        call.acceptor,
        call.account,
        envelope=envelope,
        template_name=name,
        template=template,
        data=data,
        configuration=configuration,
        tags=tags,
    )
    return xml.element("MessageId", message_id)


async def send_bulk_templated_email(call: v1.Call) -> str | None:
    p = call.params
    destinations = p.structs("Destinations")
    if not destinations:
        raise missing("Destinations")
    if len(destinations) > MAX_BULK_DESTINATIONS:
        raise invalid(
            f"Destinations may list at most {MAX_BULK_DESTINATIONS} destinations."
        )
    source = p.require("Source")
    name = p.require("Template")
    defaults = parse_data(p.require("DefaultTemplateData"))
    default_tags = _tags(p, "DefaultTags")
    configuration = await sending.resolve_configuration_set(
        call.runtime, call.account, p.get("ConfigurationSetName")
    )
    template = await load_template(call.runtime, call.account, name)

    statuses = []
    for index, fields in enumerate(destinations, start=1):
        prefix = f"Destinations.member.{index}"
        envelope = Envelope(
            source=source,
            to=p.members(f"{prefix}.Destination.ToAddresses"),
            cc=p.members(f"{prefix}.Destination.CcAddresses"),
            bcc=p.members(f"{prefix}.Destination.BccAddresses"),
            reply_to=p.members("ReplyToAddresses"),
            return_path=p.get("ReturnPath"),
        )
        try:
            data = defaults
            replacement = fields.get("ReplacementTemplateData")
            if replacement:
                data = {**defaults, **parse_data(replacement)}
            tags = {**default_tags, **_tags(p, f"{prefix}.ReplacementTags")}
            message_id = await send_templated(
                call.runtime,
                call.acceptor,
                call.account,
                envelope=envelope,
                template_name=name,
                template=template,
                data=data,
                configuration=configuration,
                tags=tags,
            )
        except (ApiError, AcceptError) as exc:
            statuses.append(
                xml.element("Status", bulk_status(exc.code, exc.message))
                + xml.element("Error", exc.message)
            )
        except StoreUnavailable:
            statuses.append(
                xml.element("Status", "TransientFailure")
                + xml.element("Error", "Service is unavailable. Retry later.")
            )
        else:
            statuses.append(
                xml.element("Status", "Success") + xml.element("MessageId", message_id)
            )
    return xml.members("Status", statuses)


def _tags(p: Params, prefix: str) -> dict[str, str]:
    return sending.check_tags(
        (item.get("Name", ""), item.get("Value", "")) for item in p.structs(prefix)
    )


def bulk_status(code: str, message: str) -> str:
    """Return SES's BulkEmailStatus for the error of one destination."""
    if code == "Throttling":
        return "AccountDailyQuotaExceeded" if "Daily" in message else "AccountThrottled"
    return _BULK_STATUS.get(code, "Failed")


_BULK_STATUS = {
    "MessageRejected": "MessageRejected",
    "MailFromDomainNotVerifiedException": "MailFromDomainNotVerified",
    "AccountSendingPausedException": "AccountSendingPaused",
    "InvalidParameterValue": "InvalidParameterValue",
    "MissingParameter": "InvalidParameterValue",
    "InvalidRenderingParameter": "InvalidParameterValue",
}


# -- stored templates -------------------------------------------------------


async def create_template(call: v1.Call) -> str | None:
    await _put(call, create=True)
    return ""


async def update_template(call: v1.Call) -> str | None:
    await _put(call, create=False)
    return ""


async def _put(call: v1.Call, *, create: bool) -> None:
    p = call.params
    name = p.require("Template.TemplateName")
    async with call.runtime.pool.connection() as conn:
        try:
            done = await templates.put_template(
                conn,
                call.account.id,
                name,
                subject=p.get("Template.SubjectPart"),
                text=p.get("Template.TextPart"),
                html=p.get("Template.HtmlPart"),
                create=create,
            )
        except TemplateError as exc:
            raise ApiError(exc.code, exc.message) from None
    if done:
        return
    if create:
        raise ApiError("AlreadyExists", f"Template {name} already exists.")
    raise template_does_not_exist(name)


async def get_template(call: v1.Call) -> str | None:
    name = call.params.require("TemplateName")
    async with call.runtime.pool.connection() as conn:
        found = await templates.get_template(conn, call.account.id, name)
    if found is None:
        raise template_does_not_exist(name)
    fields = (
        xml.element("TemplateName", found.name)
        + xml.element("SubjectPart", found.subject)
        + xml.element("TextPart", found.text)
        + xml.element("HtmlPart", found.html)
    )
    return f"<Template>{fields}</Template>"


async def delete_template(call: v1.Call) -> str | None:
    name = call.params.require("TemplateName")
    async with call.runtime.pool.connection() as conn:
        await templates.delete_template(conn, call.account.id, name)
    return ""  # SES answers success for templates that do not exist


async def list_templates(call: v1.Call) -> str | None:
    p = call.params
    limit = p.integer("MaxItems", DEFAULT_TEMPLATE_PAGE) or DEFAULT_TEMPLATE_PAGE
    if limit < 1:
        raise invalid("MaxItems must be at least 1.")
    limit = min(limit, MAX_TEMPLATE_PAGE)
    after = v1._decode_token(p.get("NextToken"))
    async with call.runtime.pool.connection() as conn:
        rows = await templates.list_templates(
            conn, call.account.id, after=after, limit=limit + 1
        )
    page = rows[:limit]
    body = xml.members(
        "TemplatesMetadata",
        (
            xml.element("Name", t.name) + xml.element("CreatedTimestamp", t.created_at)
            for t in page
        ),
    )
    if len(rows) > limit:
        body += xml.element("NextToken", v1._encode_token(page[-1].name))
    return body


async def test_render_template(call: v1.Call) -> str | None:
    p = call.params
    name = p.require("TemplateName")
    data = parse_data(p.require("TemplateData"))
    template = await load_template(call.runtime, call.account, name)
    try:
        rendered = template.render(data)
        mime = templates.preview(
            rendered,
            message_id_header=sending.message_id_header(
                call.runtime, ids.new_message_id()
            ),
            date=email.utils.format_datetime(datetime.now(UTC)),
        )
    except TemplateError as exc:
        raise ApiError(exc.code, exc.message) from None
    return xml.element("RenderedTemplate", mime)


ACTIONS: dict[str, v1.Handler] = {
    "SendTemplatedEmail": send_templated_email,
    "SendBulkTemplatedEmail": send_bulk_templated_email,
    "CreateTemplate": create_template,
    "UpdateTemplate": update_template,
    "GetTemplate": get_template,
    "DeleteTemplate": delete_template,
    "ListTemplates": list_templates,
    "TestRenderTemplate": test_render_template,
}

# api.v1 imports this module last; the actions join its table here, which works
# whichever of the two modules is imported first.
v1.ACTIONS.update(ACTIONS)

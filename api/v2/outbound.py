"""SESv2 SendEmail and SendBulkEmail: Simple, Raw and Template content.

Every message goes through :mod:`api.sending` to the one accept path. As in SES,
a template that fails to render still gets a MessageId, and a Rendering Failure
event says why; malformed TemplateData is refused at once.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter
from pydantic import Field

from api import sending
from api.errors import ApiError
from api.v2.auth import Caller, CallerDep, V2Route, bad_request, not_found
from api.v2.models import (
    Destination,
    MessageHeader,
    MessageTag,
    SesModel,
    decode_blob,
)
from mta import message, templates
from mta.accept import AcceptError, StoreUnavailable, Submission
from mta.templates import TemplateError
from sesame import ids

log = logging.getLogger(__name__)

router = APIRouter(route_class=V2Route, tags=["Sending"])

# SES: at most 50 destinations in one SendBulkEmail call.
MAX_BULK_ENTRIES = 50
# SES: a template named by ARN ends with "template/<name>".
_ARN_TEMPLATE = ":template/"

BulkEmailStatus = Literal[
    "SUCCESS",
    "MESSAGE_REJECTED",
    "MAIL_FROM_DOMAIN_NOT_VERIFIED",
    "CONFIGURATION_SET_NOT_FOUND",
    "TEMPLATE_NOT_FOUND",
    "ACCOUNT_SUSPENDED",
    "ACCOUNT_THROTTLED",
    "ACCOUNT_DAILY_QUOTA_EXCEEDED",
    "INVALID_SENDING_POOL_NAME",
    "ACCOUNT_SENDING_PAUSED",
    "CONFIGURATION_SET_SENDING_PAUSED",
    "INVALID_PARAMETER",
    "TRANSIENT_FAILURE",
    "FAILED",
]

# The bulk status of each error code a send can raise (v1 spellings).
_BULK_STATUS: dict[str, BulkEmailStatus] = {
    "MessageRejected": "MESSAGE_REJECTED",
    "MailFromDomainNotVerified": "MAIL_FROM_DOMAIN_NOT_VERIFIED",
    "ConfigurationSetDoesNotExist": "CONFIGURATION_SET_NOT_FOUND",
    "ConfigurationSetSendingPausedException": "CONFIGURATION_SET_SENDING_PAUSED",
    "TemplateDoesNotExist": "TEMPLATE_NOT_FOUND",
    "AccountSendingPausedException": "ACCOUNT_SENDING_PAUSED",
    "InvalidParameterValue": "INVALID_PARAMETER",
    "MissingParameter": "INVALID_PARAMETER",
}


# -- models ------------------------------------------------------------------


class Content(SesModel):
    """A piece of text and its character set."""

    data: str = Field(description="The text.")
    charset: Annotated[
        str | None, Field(description="Its charset; UTF-8 by default.")
    ] = None


class Body(SesModel):
    """The text and HTML versions of a message; at least one."""

    text: Annotated[Content | None, Field(description="Plain-text body.")] = None
    html: Annotated[Content | None, Field(description="HTML body.")] = None


class Attachment(SesModel):
    """A file attached to, or shown inline in, a message."""

    raw_content: str = Field(description="The file's bytes in base64.")
    file_name: str = Field(max_length=255, description="The file's name.")
    content_disposition: Annotated[
        Literal["ATTACHMENT", "INLINE"] | None,
        Field(description="ATTACHMENT (the default) or INLINE."),
    ] = None
    content_description: Annotated[
        str | None, Field(max_length=1000, description="Accepted; not written.")
    ] = None
    content_id: Annotated[
        str | None,
        Field(min_length=1, max_length=78, description="For cid: links in the HTML."),
    ] = None
    content_transfer_encoding: Annotated[
        Literal["BASE64", "QUOTED_PRINTABLE", "SEVEN_BIT"] | None,
        Field(description="Accepted; attachments are always base64."),
    ] = None
    content_type: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=78,
            description="Media type; guessed from FileName when absent.",
        ),
    ] = None


class Message(SesModel):
    """A message for Sesame to build."""

    subject: Content = Field(description="The subject line.")
    body: Body = Field(description="The bodies.")
    headers: Annotated[
        list[MessageHeader], Field(max_length=15, description="Extra header fields.")
    ] = []
    attachments: Annotated[list[Attachment], Field(description="Files to attach.")] = []


class RawMessage(SesModel):
    """A complete MIME message."""

    data: str = Field(description="The message in base64.")


class EmailTemplateContent(SesModel):
    """A template given inline."""

    subject: Annotated[str | None, Field(description="Subject part.")] = None
    text: Annotated[str | None, Field(description="Text part.")] = None
    html: Annotated[str | None, Field(description="HTML part.")] = None


class Template(SesModel):
    """A stored or inline template, and the data to render it with."""

    template_name: Annotated[
        str | None, Field(min_length=1, description="A stored template.")
    ] = None
    template_arn: Annotated[
        str | None, Field(min_length=1, description="A stored template, by ARN.")
    ] = None
    template_content: Annotated[
        EmailTemplateContent | None, Field(description="An inline template.")
    ] = None
    template_data: Annotated[
        str | None,
        Field(max_length=262_144, description="A JSON object of the values."),
    ] = None
    headers: Annotated[
        list[MessageHeader], Field(max_length=15, description="Extra header fields.")
    ] = []
    attachments: Annotated[list[Attachment], Field(description="Files to attach.")] = []


class EmailContent(SesModel):
    """Exactly one of Simple, Raw and Template."""

    simple: Annotated[
        Message | None, Field(description="Sesame builds the message.")
    ] = None
    raw: Annotated[RawMessage | None, Field(description="The caller built it.")] = None
    template: Annotated[
        Template | None, Field(description="Built from a template.")
    ] = None


class _SenderOptions(SesModel):
    """Fields every send shares besides its sender and content."""

    from_email_address_identity_arn: Annotated[
        str | None, Field(description="Accepted and ignored.")
    ] = None
    reply_to_addresses: Annotated[
        list[str], Field(description="Reply-To: addresses.")
    ] = []
    feedback_forwarding_email_address: Annotated[
        str | None, Field(description="Must be verified, like the sender.")
    ] = None
    feedback_forwarding_email_address_identity_arn: Annotated[
        str | None, Field(description="Accepted and ignored.")
    ] = None


class SendEmailRequest(_SenderOptions):
    """Send one message."""

    from_email_address: Annotated[
        str | None, Field(description="The sender; for Raw content, From when absent.")
    ] = None
    destination: Annotated[
        Destination | None,
        Field(description="Recipients; for Raw content, To/Cc/Bcc when absent."),
    ] = None
    content: EmailContent = Field(description="The message.")
    email_tags: Annotated[
        list[MessageTag], Field(description="Tags for the message's events.")
    ] = []
    configuration_set_name: Annotated[
        str | None, Field(description="A configuration set of the account.")
    ] = None
    endpoint_id: Annotated[str | None, Field(description="Accepted and ignored.")] = (
        None
    )
    tenant_name: Annotated[str | None, Field(description="Accepted and ignored.")] = (
        None
    )
    list_management_options: Annotated[
        dict[str, str] | None,
        Field(description="Accepted and ignored: no contact lists."),
    ] = None


class SendEmailResponse(SesModel):
    """The accepted message."""

    message_id: str = Field(description="The id of the message.")


class BulkEmailContent(SesModel):
    """The template every entry of a bulk send is rendered from."""

    template: Template = Field(description="The template and its default data.")


class ReplacementTemplate(SesModel):
    """Data of one entry, over the template's default data."""

    replacement_template_data: Annotated[
        str | None, Field(max_length=262_144, description="A JSON object.")
    ] = None


class ReplacementEmailContent(SesModel):
    """What one entry changes in the template's rendering."""

    replacement_template: Annotated[
        ReplacementTemplate | None, Field(description="Data for this entry.")
    ] = None


class BulkEmailEntry(SesModel):
    """One message of a bulk send."""

    destination: Destination = Field(description="Its recipients.")
    replacement_tags: Annotated[
        list[MessageTag], Field(description="Tags over DefaultEmailTags.")
    ] = []
    replacement_email_content: Annotated[
        ReplacementEmailContent | None, Field(description="Its template data.")
    ] = None
    replacement_headers: Annotated[
        list[MessageHeader],
        Field(max_length=15, description="Header fields over the template's, by name."),
    ] = []


class SendBulkEmailRequest(_SenderOptions):
    """Send one templated message per entry."""

    from_email_address: Annotated[str | None, Field(description="The sender.")] = None
    default_email_tags: Annotated[
        list[MessageTag], Field(description="Tags of every entry.")
    ] = []
    default_content: BulkEmailContent = Field(description="The template.")
    bulk_email_entries: list[BulkEmailEntry] = Field(
        min_length=1, max_length=MAX_BULK_ENTRIES, description="The messages."
    )
    configuration_set_name: Annotated[
        str | None, Field(description="A configuration set of the account.")
    ] = None
    endpoint_id: Annotated[str | None, Field(description="Accepted and ignored.")] = (
        None
    )
    tenant_name: Annotated[str | None, Field(description="Accepted and ignored.")] = (
        None
    )


class BulkEmailEntryResult(SesModel):
    """What became of one entry."""

    status: BulkEmailStatus = Field(description="SUCCESS, or why not.")
    error: Annotated[str | None, Field(description="The reason, when not SUCCESS.")] = (
        None
    )
    message_id: Annotated[str | None, Field(description="When SUCCESS.")] = None


class SendBulkEmailResponse(SesModel):
    """One result per entry, in their order."""

    bulk_email_entry_results: list[BulkEmailEntryResult] = Field(
        description="The results."
    )


# -- routes ------------------------------------------------------------------


@router.post(
    "/outbound-emails",
    name="SendEmail",
    operation_id="SendEmail",
    response_model=SendEmailResponse,
)
async def send_email(body: SendEmailRequest, call: CallerDep) -> SendEmailResponse:
    """Send a message built from Simple, Raw or Template content."""
    content = body.content
    given = [c for c in (content.simple, content.raw, content.template) if c]
    if len(given) != 1:
        raise bad_request("Content must have exactly one of Simple, Raw or Template.")
    tags = _tags(body.email_tags)
    destination = body.destination or Destination()

    if content.raw is not None:
        submission = await sending.raw_submission(
            call.runtime,
            call.account,
            data=decode_blob(content.raw.data, "Content.Raw.Data"),
            source=body.from_email_address,
            destinations=[
                *destination.to_addresses,
                *destination.cc_addresses,
                *destination.bcc_addresses,
            ],
            configuration_set=body.configuration_set_name,
            tags=tags,
        )
        return SendEmailResponse(message_id=await call.acceptor.accept(submission))

    envelope = _Envelope(
        source=_required_source(body.from_email_address),
        destination=destination,
        reply_to=body.reply_to_addresses,
        return_path=body.feedback_forwarding_email_address,
        configuration_set=body.configuration_set_name,
    )
    if content.simple is not None:
        simple = content.simple
        parts = sending.SimpleContent(
            subject=simple.subject.data,
            subject_charset=simple.subject.charset,
            text=simple.body.text.data if simple.body.text else None,
            text_charset=simple.body.text.charset if simple.body.text else None,
            html=simple.body.html.data if simple.body.html else None,
            html_charset=simple.body.html.charset if simple.body.html else None,
            headers=_headers(simple.headers),
            attachments=_attachments(simple.attachments),
        )
        if parts.text is None and parts.html is None:
            raise bad_request("Content.Simple.Body must have Text or Html.")
        submission = await _submission(call, envelope, parts, tags)
        return SendEmailResponse(message_id=await call.acceptor.accept(submission))

    assert content.template is not None
    template = await _load_template(call, content.template)
    data = _data(content.template.template_data or "{}")
    message_id = await _send_templated(
        call,
        envelope,
        template,
        data,
        headers=_headers(content.template.headers),
        attachments=_attachments(content.template.attachments),
        tags=tags,
    )
    return SendEmailResponse(message_id=message_id)


@router.post(
    "/outbound-bulk-emails",
    name="SendBulkEmail",
    operation_id="SendBulkEmail",
    response_model=SendBulkEmailResponse,
    response_model_exclude_none=True,
)
async def send_bulk_email(
    body: SendBulkEmailRequest, call: CallerDep
) -> SendBulkEmailResponse:
    """Send one message per entry from a template; report each entry's outcome."""
    default = body.default_content.template
    template = await _load_template(call, default)
    default_data = _data(default.template_data or "{}")
    await sending.resolve_configuration_set(
        call.runtime, call.account, body.configuration_set_name
    )
    source = _required_source(body.from_email_address)
    default_headers = _headers(default.headers)
    attachments = _attachments(default.attachments)
    default_tags = _tags(body.default_email_tags)

    results = []
    for entry in body.bulk_email_entries:
        envelope = _Envelope(
            source=source,
            destination=entry.destination,
            reply_to=body.reply_to_addresses,
            return_path=body.feedback_forwarding_email_address,
            configuration_set=body.configuration_set_name,
        )
        results.append(
            await _bulk_entry(
                call,
                envelope,
                template,
                default_data,
                entry,
                headers=_merge_headers(
                    default_headers, _headers(entry.replacement_headers)
                ),
                attachments=attachments,
                default_tags=default_tags,
            )
        )
    return SendBulkEmailResponse(bulk_email_entry_results=results)


# -- templates ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    """Who a templated or simple message is from and to."""

    source: str
    destination: Destination
    reply_to: Sequence[str]
    return_path: str | None
    configuration_set: str | None


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    compiled: templates.Compiled


async def _load_template(call: Caller, given: Template) -> _Template:
    """Return the stored or inline template of Template content, compiled."""
    named = [
        x
        for x in (given.template_name, given.template_arn, given.template_content)
        if x
    ]
    if len(named) != 1:
        raise bad_request(
            "Template must have exactly one of TemplateName, TemplateArn and"
            " TemplateContent."
        )
    try:
        if given.template_content is not None:
            inline = given.template_content
            return _Template(
                "inline",
                templates.compile_template(inline.subject, inline.text, inline.html),
            )
        name = given.template_name or _name_from_arn(given.template_arn or "")
        async with call.runtime.pool.connection() as conn:
            stored = await templates.get_template(conn, call.account.id, name)
        if stored is None:
            raise not_found(f"Template {name} does not exist.")
        return _Template(
            name, templates.compile_template(stored.subject, stored.text, stored.html)
        )
    except TemplateError as exc:
        raise bad_request(exc.message) from None


def _name_from_arn(arn: str) -> str:
    _, marker, name = arn.rpartition(_ARN_TEMPLATE)
    if not marker or not name:
        raise bad_request(f"Invalid template ARN <{arn}>.")
    return name


def _data(data_json: str) -> dict[str, object]:
    try:
        return templates.parse_data(data_json)
    except TemplateError as exc:
        raise bad_request(exc.message) from None


async def _send_templated(
    call: Caller,
    envelope: _Envelope,
    template: _Template,
    data: dict[str, object],
    *,
    headers: Sequence[tuple[str, str]],
    attachments: Sequence[message.Attachment],
    tags: dict[str, str],
) -> str:
    """Render and send one templated message; return its MessageId."""
    try:
        rendered = template.compiled.render(data)
    except TemplateError as exc:
        return await _rendering_failed(call, envelope, template, tags, exc)
    parts = sending.SimpleContent(
        subject=rendered.subject or "",
        subject_charset="UTF-8",
        text=rendered.text,
        text_charset="UTF-8",
        html=rendered.html,
        html_charset="UTF-8",
        headers=headers,
        attachments=attachments,
    )
    submission = await _submission(call, envelope, parts, tags)
    return await call.acceptor.accept(submission)


async def _rendering_failed(
    call: Caller,
    envelope: _Envelope,
    template: _Template,
    tags: dict[str, str],
    error: TemplateError,
) -> str:
    """Record a send whose template did not render, as SES does; return its id."""
    sender = sending.parse_address(envelope.source)
    destination = envelope.destination
    rcpts = sending.recipients(
        call.runtime,
        [
            sending.parse_address(a)
            for a in (
                *destination.to_addresses,
                *destination.cc_addresses,
                *destination.bcc_addresses,
            )
        ],
    )
    configuration = await sending.resolve_configuration_set(
        call.runtime, call.account, envelope.configuration_set
    )
    message_id = ids.new_message_id()
    async with call.runtime.pool.connection() as conn:
        await templates.record_rendering_failure(
            conn,
            account_id=call.account.id,
            message_id=message_id,
            source=envelope.source,
            from_domain=sender.domain,
            destination=[address for address, _ in rcpts],
            configuration_set=configuration.name if configuration else None,
            tags=tags,
            template_name=template.name,
            error=error,
        )
    return message_id


async def _bulk_entry(
    call: Caller,
    envelope: _Envelope,
    template: _Template,
    default_data: dict[str, object],
    entry: BulkEmailEntry,
    *,
    headers: Sequence[tuple[str, str]],
    attachments: Sequence[message.Attachment],
    default_tags: dict[str, str],
) -> BulkEmailEntryResult:
    """Send one entry of a bulk send; report its outcome instead of raising."""
    try:
        data = dict(default_data)
        replacement = entry.replacement_email_content
        if replacement and replacement.replacement_template:
            more = replacement.replacement_template.replacement_template_data
            if more:
                data.update(_data(more))
        tags = {**default_tags, **_tags(entry.replacement_tags)}
        message_id = await _send_templated(
            call,
            envelope,
            template,
            data,
            headers=headers,
            attachments=attachments,
            tags=tags,
        )
    except (ApiError, AcceptError) as exc:
        return BulkEmailEntryResult(status=_bulk_status(exc), error=exc.message)
    except StoreUnavailable:
        return BulkEmailEntryResult(
            status="TRANSIENT_FAILURE", error="Service is unavailable. Retry later."
        )
    return BulkEmailEntryResult(status="SUCCESS", message_id=message_id)


def _bulk_status(exc: ApiError | AcceptError) -> BulkEmailStatus:
    if exc.code == "Throttling":
        daily = "daily" in exc.message.lower()
        return "ACCOUNT_DAILY_QUOTA_EXCEEDED" if daily else "ACCOUNT_THROTTLED"
    if exc.code in _BULK_STATUS:
        return _BULK_STATUS[exc.code]
    if exc.code in ("BadRequestException", "NotFoundException"):
        return "INVALID_PARAMETER"
    return "FAILED"


# -- helpers -----------------------------------------------------------------


async def _submission(
    call: Caller,
    envelope: _Envelope,
    parts: sending.SimpleContent,
    tags: dict[str, str],
) -> Submission:
    destination = envelope.destination
    return await sending.simple_submission(
        call.runtime,
        call.account,
        source=envelope.source,
        to=destination.to_addresses,
        cc=destination.cc_addresses,
        bcc=destination.bcc_addresses,
        reply_to=envelope.reply_to,
        content=parts,
        return_path=envelope.return_path,
        configuration_set=envelope.configuration_set,
        tags=tags,
    )


def _required_source(source: str | None) -> str:
    if not source:
        raise bad_request("FromEmailAddress is required for this content.")
    return source


def _tags(tags: Sequence[MessageTag]) -> dict[str, str]:
    return sending.check_tags((tag.name, tag.value) for tag in tags)


def _headers(headers: Sequence[MessageHeader]) -> list[tuple[str, str]]:
    return [(header.name, header.value) for header in headers]


def _merge_headers(
    default: Sequence[tuple[str, str]], replacement: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Return the template's header fields with an entry's own ones in their place."""
    replaced = {name.lower() for name, _ in replacement}
    return [
        *(field for field in default if field[0].lower() not in replaced),
        *replacement,
    ]


def _attachments(attachments: Sequence[Attachment]) -> list[message.Attachment]:
    """Decode attachments into what the message builder takes."""
    built = []
    for n, attachment in enumerate(attachments):
        content_type = attachment.content_type
        if content_type is None:
            guessed, _ = mimetypes.guess_type(attachment.file_name, strict=False)
            content_type = guessed or "application/octet-stream"
        disposition = (attachment.content_disposition or "ATTACHMENT").lower()
        built.append(
            message.Attachment(
                filename=attachment.file_name,
                content_type=content_type,
                data=decode_blob(
                    attachment.raw_content, f"Attachments[{n}].RawContent"
                ),
                disposition=disposition,
                content_id=attachment.content_id,
            )
        )
    return built

"""Parse abuse feedback reports: RFC 5965 ARF inside RFC 3462/6522 multipart/report.

Shares the bounded MIME walker with the RFC 3464 DSN parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mta.feedback.dsn import _address, _lookup, _Message, _Part, _text

# The RFC 5965 section 7.3 registry. Anything else (draft-era "opt-out", say)
# is reported as "other" so callers only ever see this closed set.
_FEEDBACK_TYPES = frozenset(
    {"abuse", "auth-failure", "fraud", "not-spam", "other", "virus"}
)
_REPORT_TYPES = frozenset({"message/feedback-report"})
# One report names one message, so a handful of recipients is normal.
_MAX_RCPT_TO = 100
# An ARF report part is a single short header block.
_MAX_REPORT_LINES = 2_000
_TOKEN = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_-]*)", re.ASCII)
# Cheap test that a part may hold the required Feedback-Type field.
_FEEDBACK_LINE = re.compile(
    rb"^[ \t]*feedback-type[ \t]*:", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """A parsed ARF report; addresses are bare, other values as written."""

    feedback_type: str
    user_agent: str | None
    version: str | None
    arrival_date: str | None
    source_ip: str | None
    original_rcpt_to: tuple[str, ...]
    original_mail_from: str | None
    reported_domain: str | None
    original_return_path: str | None
    original_message_id: str | None
    original_headers: tuple[tuple[str, str], ...]


def parse_arf(data: bytes) -> FeedbackReport | None:
    """Parse an RFC 5965 feedback report; None if it is not one."""
    message = _Message.parse(data)
    if message is None:
        return None
    found = _report_part(message)
    if found is None:
        return None
    part, fields, feedback_type = found
    lookup = _lookup(fields)
    rcpt_to: list[str] = []
    for name, value in fields:
        if name.lower() == "original-rcpt-to" and len(rcpt_to) < _MAX_RCPT_TO:
            address = _address(value)
            if address is not None:
                rcpt_to.append(address)
    headers, return_path, message_id = message.original(part)
    # Received-Date is the pre-RFC name some older reporters still send.
    arrival = lookup.get("arrival-date", lookup.get("received-date"))
    return FeedbackReport(
        feedback_type=feedback_type,
        user_agent=_text(lookup.get("user-agent")),
        version=_text(lookup.get("version")),
        arrival_date=_text(arrival),
        source_ip=_text(lookup.get("source-ip")),
        original_rcpt_to=tuple(rcpt_to),
        original_mail_from=_address(lookup.get("original-mail-from")),
        reported_domain=_text(lookup.get("reported-domain")),
        original_return_path=return_path,
        original_message_id=message_id,
        original_headers=headers,
    )


def _report_part(message: _Message) -> tuple[_Part, list[tuple[str, str]], str] | None:
    """Find the feedback-report part, tolerating one labelled text/plain."""
    candidates = [part for part in message.leaves if part.content_type in _REPORT_TYPES]
    candidates += [
        part
        for part in message.leaves
        if part.content_type == "text/plain"
        and part.parent_type == "multipart/report"
        and part.parent_params.get("report-type", "").lower() == "feedback-report"
    ]
    for part in candidates:
        body = message.body(part)
        if _FEEDBACK_LINE.search(body) is None:
            continue
        fields = message.fields(body, _MAX_REPORT_LINES)
        feedback_type = _feedback_type(_lookup(fields).get("feedback-type"))
        if feedback_type is not None:
            return part, fields, feedback_type
    return None


def _feedback_type(value: str | None) -> str | None:
    """Return the lower-cased Feedback-Type, mapping unknown ones to "other"."""
    match = _TOKEN.match(value) if value is not None else None
    if match is None:
        return None
    feedback_type = match[1].lower()
    return feedback_type if feedback_type in _FEEDBACK_TYPES else "other"

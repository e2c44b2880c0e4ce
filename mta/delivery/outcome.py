"""Classify SMTP replies (RFC 5321) and enhanced status codes (RFC 3463) in SES terms.

Also covers the failures around a reply: refused connections, DNS, STARTTLS (RFC 3207).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

__all__ = [
    "AttemptOutcome",
    "AttemptResult",
    "Bounce",
    "BounceSubtype",
    "BounceType",
    "DelayType",
    "classify_reply",
    "classify_status",
    "connection_failure",
    "dns_failure",
    "parse_enhanced_status",
    "session_refused",
]


class AttemptOutcome(StrEnum):
    """What one delivery attempt did for one recipient."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"
    FAILED = "failed"


# SES's own vocabularies, spelled as SES spells them in bounce and delay events.
BounceType = Literal["Permanent", "Transient", "Undetermined"]
BounceSubtype = Literal[
    "General",
    "NoEmail",
    "Suppressed",
    "OnAccountSuppressionList",
    "MailboxFull",
    "MessageTooLarge",
    "ContentRejected",
    "AttachmentRejected",
    "Undetermined",
]
# "SendingDeferral" is SES deferring on its own; Sesame keeps it for deferrals made
# by its own shaping, so classify_reply never returns it.
DelayType = Literal[
    "InternalFailure",
    "General",
    "MailboxFull",
    "SpamDetected",
    "RecipientServerError",
    "IPFailure",
    "TransientCommunicationFailure",
    "Undetermined",
    "SendingDeferral",
]
Bounce = tuple[BounceType, BounceSubtype]


# RFC 3463 section 3.2, X.1.3 (bad mailbox syntax) and X.1.4 (ambiguous): the
# recipient address itself is unusable, like NoEmail, although it is not "unknown".
_RECIPIENT_ADDRESS_STATUSES = frozenset({"5.1.3", "5.1.4"})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt for one recipient."""

    outcome: AttemptOutcome
    smtp_code: int | None
    enhanced_status: str | None
    response: str  # reply text on one line without the basic code, or our reason
    mx_host: str | None
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    delay_type: str | None = None
    retry_after: float | None = None

    @property
    def suppressible(self) -> bool:
        """Whether this failure proves the address is bad and may be suppressed.

        Only recipient-address failures qualify (NoEmail, bad or ambiguous address
        syntax); a policy, reputation or content block says nothing about the address.
        """
        if self.bounce_type != "Permanent":
            return False
        if self.bounce_subtype == "NoEmail":
            return True
        return (
            self.bounce_subtype == "General"
            and self.enhanced_status in _RECIPIENT_ADDRESS_STATUSES
        )


# RFC 3463 section 2: class "." subject "." detail, subject and detail 1-3 digits.
# RFC 2034 section 4 puts it right after the reply code, before the text.
_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# A raw reply line still carrying its basic code ("550-5.7.1 ..."), RFC 5321 4.2.
_BASIC_PREFIX_RE = re.compile(r"^[2-5]\d\d(?:[- ]|$)")

_NO_SUCH_USER_RE = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient|address|account)"
    r"|does ?n[o']t exist|not exist|unknown (?:recipient|mailbox|address|account)"
    r"|recipient (?:address )?(?:unknown|not found|invalid)|user not found"
    r"|invalid (?:recipient|mailbox)|mailbox not found|address not found",
    re.IGNORECASE,
)
_SENDER_RE = re.compile(r"\bsender\b|\bmail from\b", re.IGNORECASE)
_MAILBOX_FULL_RE = re.compile(
    r"mailbox (?:is )?full|over ?quota|quota exceeded|exceeded (?:storage|quota)"
    r"|insufficient (?:storage|space)|mailbox size limit",
    re.IGNORECASE,
)
_TOO_LARGE_RE = re.compile(
    r"too (?:large|big|long)|size (?:exceeds|limit)|exceeds (?:the )?(?:size|maximum)"
    r"|message size",
    re.IGNORECASE,
)
# Checked before _CONTENT_RE: "blocked using zen.spamhaus.org" is about our IP,
# although it contains "spam".
_REPUTATION_RE = re.compile(
    r"reputation|block ?list|black ?list|\brbl\b|dnsbl|spamhaus|spamcop|barracuda"
    r"|listed (?:at|on|in|by)|blocked using|\bptr\b|reverse dns|\brdns\b"
    r"|not authori[sz]ed|unauthenticated|\bspf\b|\bdkim\b|\bdmarc\b|relay"
    r"|rate limit|too many|throttl|volume|complaints",
    re.IGNORECASE,
)
_ATTACHMENT_RE = re.compile(r"attachment|file type|file extension", re.IGNORECASE)
_CONTENT_RE = re.compile(
    r"spam|unsolicited|junk|content|phish|malware|virus|suspicious",
    re.IGNORECASE,
)
_GREYLIST_RE = re.compile(r"gr[ae]y ?list", re.IGNORECASE)

_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# "try again in 300 seconds", "retry in 5 minutes", "try again later in 2 hours",
# "greylisted for 60s", "please wait 30 seconds".
_RETRY_AFTER_RE = re.compile(
    r"(?:(?:try|retry|resend)\b[^.\n]{0,25}?\b(?:in|after)|gr[ae]ylist\w*\s+for|wait)"
    r"\s+(\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|mins?|minutes?|h|hrs?|hours?)\b",
    re.IGNORECASE,
)


def parse_enhanced_status(text: str, code: int | None = None) -> str | None:
    """Return the RFC 3463 status at the start of a reply text, if there is one."""
    lines = _reply_lines(text, code)
    if not lines:
        return None
    match = _ENHANCED_RE.match(lines[0])
    if match is None:
        return None
    klass, subject, detail = (int(part) for part in match.groups())
    return f"{klass}.{subject}.{detail}"


def classify_reply(code: int, text: str, mx_host: str | None = None) -> AttemptResult:
    """Classify one SMTP reply (code and text, possibly multi-line) for one recipient."""
    lines = _reply_lines(text, code)
    given = parse_enhanced_status(text, code)
    klass = code // 100
    if klass not in (2, 4, 5):
        # 1yz/3yz where a completion reply belongs is a confused server, not a
        # verdict on the message: try again later.
        return AttemptResult(
            outcome=AttemptOutcome.DEFERRED,
            smtp_code=code,
            enhanced_status=None,
            response=_render(lines),
            mx_host=mx_host,
            delay_type="Undetermined",
        )
    if given is None:
        status = f"{klass}.0.0"
    else:
        # RFC 5321 decides what the client does, so a status whose class disagrees
        # with the basic code keeps its subject and detail but takes the code's class.
        status = f"{klass}{given[1:]}"
    plain = " ".join(_strip_status(line) for line in lines)
    response = _render(lines)

    if klass == 2:
        return AttemptResult(
            outcome=AttemptOutcome.DELIVERED,
            smtp_code=code,
            enhanced_status=status,
            response=response,
            mx_host=mx_host,
        )
    if klass == 4:
        return AttemptResult(
            outcome=AttemptOutcome.DEFERRED,
            smtp_code=code,
            enhanced_status=status,
            response=response,
            mx_host=mx_host,
            delay_type=_delay_type(code, status, plain),
            retry_after=_retry_after(plain),
        )
    bounce_type, bounce_subtype = _permanent_bounce(status, plain)
    return AttemptResult(
        outcome=AttemptOutcome.FAILED,
        smtp_code=code,
        enhanced_status=status,
        response=response,
        mx_host=mx_host,
        bounce_type=bounce_type,
        bounce_subtype=bounce_subtype,
    )


def classify_status(enhanced_status: str, diagnostic: str = "") -> Bounce:
    """Return SES (bounce_type, bounce_subtype) for a final RFC 3463 status.

    Meant for 5.x.x; a 4.x.x given up on (a DSN with Action: failed) is Transient,
    and an unparseable status is Undetermined.
    """
    match = _ENHANCED_RE.match(enhanced_status.strip())
    if match is None:
        return "Undetermined", "Undetermined"
    klass, subject, detail = (int(part) for part in match.groups())
    status = f"{klass}.{subject}.{detail}"
    if klass == 5:
        return _permanent_bounce(status, diagnostic)
    if klass == 4:
        if (subject, detail) == (2, 2) or _MAILBOX_FULL_RE.search(diagnostic):
            return "Transient", "MailboxFull"
        if subject == 3 and detail == 4:
            return "Transient", "MessageTooLarge"
        return "Transient", "General"
    return "Undetermined", "Undetermined"


def connection_failure(
    reason: str, mx_host: str | None, *, enhanced_status: str = "4.4.1"
) -> AttemptResult:
    """Return a deferral for a host we could not talk to (refused, timeout, lost)."""
    # RFC 3463: 4.4.1 no answer from host, 4.4.2 bad connection, 4.7.x security.
    return AttemptResult(
        outcome=AttemptOutcome.DEFERRED,
        smtp_code=None,
        enhanced_status=enhanced_status,
        response=reason,
        mx_host=mx_host,
        delay_type="TransientCommunicationFailure",
    )


def session_refused(code: int, text: str, mx_host: str | None) -> AttemptResult:
    """Return a deferral for a host that refused the session (greeting or EHLO)."""
    result = classify_reply(code, text, mx_host)
    if result.outcome is AttemptOutcome.DEFERRED:
        return result
    # RFC 5321 3.1: a 554 greeting means "no SMTP service here", which says nothing
    # about the recipients, so another MX host or a later attempt may do. X.3.2 is
    # RFC 3463's "system not accepting network messages".
    return AttemptResult(
        outcome=AttemptOutcome.DEFERRED,
        smtp_code=code,
        enhanced_status="4.3.2",
        response=result.response,
        mx_host=mx_host,
        delay_type="RecipientServerError",
    )


def dns_failure(permanent: bool, enhanced_status: str, reason: str) -> AttemptResult:
    """Return the result of a recipient domain whose MX lookup failed."""
    if permanent:
        # e.g. 5.1.2 (NXDOMAIN) or 5.1.10 (RFC 7505 null MX): both NoEmail.
        bounce_type, bounce_subtype = classify_status(enhanced_status, reason)
        return AttemptResult(
            outcome=AttemptOutcome.FAILED,
            smtp_code=None,
            enhanced_status=enhanced_status,
            response=reason,
            mx_host=None,
            bounce_type=bounce_type,
            bounce_subtype=bounce_subtype,
        )
    # SERVFAIL and timeouts mostly mean the destination's name servers are unwell.
    return AttemptResult(
        outcome=AttemptOutcome.DEFERRED,
        smtp_code=None,
        enhanced_status=enhanced_status,
        response=reason,
        mx_host=None,
        delay_type="RecipientServerError",
    )


def _reply_lines(text: str, code: int | None = None) -> list[str]:
    """Split a reply text into lines without basic-code prefixes (of code, if given)."""
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        prefix = _BASIC_PREFIX_RE.match(line)
        if prefix and (code is None or line[:3] == str(code)):
            line = line[prefix.end() :].strip()
        if line:
            lines.append(line)
    return lines


def _strip_status(line: str) -> str:
    """Drop the enhanced status at the start of one reply line."""
    match = _ENHANCED_RE.match(line)
    return line[match.end() :].strip() if match else line


def _render(lines: list[str]) -> str:
    """Render reply text on one line, keeping only the first line's enhanced status."""
    if not lines:
        return ""
    return " ".join([lines[0], *(_strip_status(line) for line in lines[1:])])


def _split(status: str) -> tuple[int, int]:
    """Return (subject, detail) of a normalised enhanced status."""
    _, subject, detail = status.split(".")
    return int(subject), int(detail)


def _permanent_bounce(status: str, text: str) -> Bounce:
    """Return SES (bounce_type, bounce_subtype) for a 5.x.x status and its text."""
    subject, detail = _split(status)
    if subject == 1:
        # RFC 3463 3.2; X.1.7 and X.1.8 are about OUR sender address.
        if detail in (1, 2, 6, 10):
            return "Permanent", "NoEmail"
        if detail == 0 and not _SENDER_RE.search(text):
            return "Permanent", "NoEmail"
        return "Permanent", "General"
    if subject == 2:
        # SES reports a full mailbox as Transient although the attempt is final.
        if detail == 2:
            return "Transient", "MailboxFull"
        if detail == 3:
            return "Transient", "MessageTooLarge"
        return "Permanent", "General"
    if subject == 3:
        # X.3.4: too big for the system; SES calls MessageTooLarge Transient.
        if detail == 4:
            return "Transient", "MessageTooLarge"
        return "Permanent", "General"
    if subject == 6:
        # X.6.x media errors: the receiver would not take this content.
        return "Transient", "ContentRejected"
    if subject == 7:
        # Security or policy: never about whether the address exists.
        return _policy_bounce(text)
    if subject == 0:
        return _untyped_bounce(text)
    # X.4.x routing and X.5.x protocol failures.
    return "Permanent", "General"


def _policy_bounce(text: str) -> Bounce:
    """Return the bounce for a 5.7.x policy rejection from its text."""
    if _REPUTATION_RE.search(text):
        return "Permanent", "General"
    if _ATTACHMENT_RE.search(text):
        return "Transient", "AttachmentRejected"
    if _CONTENT_RE.search(text):
        return "Transient", "ContentRejected"
    return "Permanent", "General"


def _untyped_bounce(text: str) -> Bounce:
    """Return the bounce for a 5yz reply whose status says nothing (5.0.0)."""
    if _NO_SUCH_USER_RE.search(text) and not _SENDER_RE.search(text):
        return "Permanent", "NoEmail"
    if _MAILBOX_FULL_RE.search(text):
        return "Transient", "MailboxFull"
    if _TOO_LARGE_RE.search(text):
        return "Transient", "MessageTooLarge"
    if _REPUTATION_RE.search(text) or _CONTENT_RE.search(text):
        return _policy_bounce(text)
    if _ATTACHMENT_RE.search(text):
        return "Transient", "AttachmentRejected"
    return "Permanent", "General"


def _delay_type(code: int, status: str, text: str) -> DelayType:
    """Return the SES delay type for a 4yz reply."""
    subject, detail = _split(status)
    if _GREYLIST_RE.search(text):
        return "General"
    if (subject, detail) == (2, 2) or _MAILBOX_FULL_RE.search(text):
        return "MailboxFull"
    if subject == 7:
        # 4.7.x: the receiver is holding back mail from us, by IP or by content.
        if _CONTENT_RE.search(text) and not _REPUTATION_RE.search(text):
            return "SpamDetected"
        return "IPFailure"
    if code == 421:
        # RFC 5321 4.2.3: service not available, closing the channel.
        return "TransientCommunicationFailure"
    if subject == 4:
        # X.4.1 no answer, X.4.2 bad connection, X.4.7 delivery time expired.
        if detail in (1, 2, 7):
            return "TransientCommunicationFailure"
        return "RecipientServerError"
    if subject in (2, 3):
        return "RecipientServerError"
    if subject == 0:
        if _REPUTATION_RE.search(text):
            return "IPFailure"
        if _CONTENT_RE.search(text):
            return "SpamDetected"
        if code == 451:
            # RFC 5321 4.2.3: "local error in processing".
            return "RecipientServerError"
    return "General"


def _retry_after(text: str) -> float | None:
    """Return the wait in seconds that a reply text asks for, if it names one."""
    match = _RETRY_AFTER_RE.search(text)
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]

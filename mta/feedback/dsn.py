"""Parse delivery status notifications: RFC 3464 inside RFC 3462/6522 multipart/report.

Also reads the RFC 6533 global variant; status values are RFC 3463 enhanced codes.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

# Limits on hostile input. The caller caps messages at 10 MiB; real reports are
# two or three levels deep with three parts, so these leave generous headroom.
_MAX_INPUT = 10 * 1024 * 1024
_MAX_DEPTH = 10
_MAX_PARTS = 100
_MAX_RECIPIENTS = 100
# Lines read from one header block or one report body, and from the whole
# message; anything after is dropped. Line parsing is the only per-line Python
# loop, so the total caps the work (about 3 microseconds a line) whatever the
# shape. Real reports use a few hundred lines.
_MAX_HEADER_LINES = 2_000
_MAX_REPORT_LINES = 10_000
_MAX_TOTAL_LINES = 50_000
_MAX_ORIGINAL_FIELDS = 500
# RFC 2046 section 5.1.1 caps boundaries at 70 characters; allow some slack.
_MAX_BOUNDARY = 200
# Real Content-Type fields are well under 1 KiB; longer ones are noise.
_MAX_CONTENT_TYPE = 8_192
_MAX_PARAMS = 32

_DEFAULT_TYPE = "text/plain"  # RFC 2045 section 5.2
_OPAQUE_TYPE = "application/octet-stream"
_STATUS_TYPES = frozenset(
    {
        "message/delivery-status",
        "message/global-delivery-status",
        "text/delivery-status",
    }
)
_ORIGINAL_TYPES = frozenset(
    {
        "text/rfc822-headers",
        "message/rfc822",
        "message/global",
        "message/global-headers",
    }
)
_DSN_REPORT_TYPES = frozenset({"delivery-status", "global-delivery-status", ""})
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# RFC 3463 section 3.1 classes (2 success, 4 persistent transient failure,
# 5 permanent failure) stand in for a missing or unknown Action.
_ACTION_FOR_CLASS = {"2": "delivered", "4": "delayed", "5": "failed"}
_RECIPIENT_FIELDS = frozenset(
    {"final-recipient", "original-recipient", "action", "status", "diagnostic-code"}
)

# RFC 5322 section 2.2: a field name is printable ASCII other than the colon.
_FIELD_NAME = re.compile(rb"[!-9;-~]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
# Neither side may hold a "/", so a failed match cannot backtrack quadratically.
_MEDIA_TYPE = re.compile(r"[!-.0-~]+/[!-.0-~]+", re.ASCII)
# Content-Type tokens: a quoted string (possibly unterminated), a run of plain
# text, or a separator. The alternatives start on different characters, so the
# scan is linear.
_PARAM_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^";]+|;', re.DOTALL)
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"?', re.DOTALL)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# RFC 3463 section 2: class "." subject "." detail, at most three digits each.
_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])", re.ASCII)
_EMBEDDED_STATUS = re.compile(
    r"(?<![\w.])([245])\.(\d{1,3})\.(\d{1,3})(?![\w.])", re.ASCII
)
# "smtp; 550 ..." with no enhanced code still says which class the failure is.
_REPLY_CODE = re.compile(r"\s*[\w-]+\s*;\s*([245])\d\d(?!\d)", re.ASCII)
_WORD = re.compile(r"\s*([A-Za-z][A-Za-z0-9-]*)", re.ASCII)
# Cheap test that a mislabelled text/plain part may hold per-recipient fields.
_RECIPIENT_LINE = re.compile(
    rb"^[ \t]*(?:final|original)-recipient[ \t]*:", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One per-recipient group; addresses are bare, other values as written."""

    final_recipient: str | None
    original_recipient: str | None
    action: str
    status: str
    diagnostic_code: str | None
    remote_mta: str | None


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A parsed DSN: per-message fields, recipients and the original's headers."""

    reporting_mta: str | None
    arrival_date: str | None
    recipients: tuple[DsnRecipient, ...]
    original_return_path: str | None
    original_message_id: str | None
    original_headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Part:
    """A leaf MIME entity, located by offsets into the whole message."""

    content_type: str
    headers: tuple[tuple[str, str], ...]
    start: int
    end: int
    parent_type: str
    parent_params: Mapping[str, str]


class _TooComplex(Exception):
    """Raised inside the walker when a message exceeds the structural limits."""


class _Message:
    """A message's leaf parts plus the line budget shared by all field parsing."""

    __slots__ = ("data", "leaves", "lines_left", "parts_seen")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.leaves: list[_Part] = []
        self.lines_left = _MAX_TOTAL_LINES
        self.parts_seen = 0

    @classmethod
    def parse(cls, data: bytes) -> _Message | None:
        """Walk a message's MIME tree, or return None if it breaks the limits."""
        if not isinstance(data, bytes) or len(data) > _MAX_INPUT:
            return None
        message = cls(data)
        try:
            message._walk(0, len(data), 1, "", {})
        except _TooComplex:
            return None
        return message

    def _walk(
        self,
        start: int,
        end: int,
        depth: int,
        parent_type: str,
        parent_params: Mapping[str, str],
    ) -> None:
        """Descend one entity, appending its leaves in document order."""
        header_end, body_start = _split_header(self.data, start, end)
        headers = tuple(self.fields(self.data[start:header_end], _MAX_HEADER_LINES))
        content_type, params = _content_type(_first(headers, "content-type"))
        boundary = params.get("boundary", "")
        if not content_type.startswith("multipart/") or not boundary:
            self.leaves.append(
                _Part(
                    content_type, headers, body_start, end, parent_type, parent_params
                )
            )
            return
        if depth >= _MAX_DEPTH or len(boundary) > _MAX_BOUNDARY:
            raise _TooComplex
        delimiter = boundary.encode("utf-8", "surrogateescape")
        for child_start, child_end in _split_parts(
            self.data, body_start, end, delimiter
        ):
            self.parts_seen += 1
            if self.parts_seen > _MAX_PARTS:
                raise _TooComplex
            self._walk(child_start, child_end, depth + 1, content_type, params)

    def body(self, part: _Part) -> bytes:
        """Return a leaf's body with its Content-Transfer-Encoding undone."""
        body = self.data[part.start : part.end]
        cte = _first(part.headers, "content-transfer-encoding") or ""
        encoding = cte.strip().lower()
        try:
            if encoding == "base64":
                return binascii.a2b_base64(body)
            if encoding == "quoted-printable":
                return binascii.a2b_qp(body)
        except (binascii.Error, ValueError):
            return b""
        return body

    def fields(self, block: bytes, limit: int) -> list[tuple[str, str]]:
        """Parse a header block into (name, unfolded value) pairs."""
        return [field for group in self.field_groups(block, limit) for field in group]

    def field_groups(self, block: bytes, limit: int) -> list[list[tuple[str, str]]]:
        """Parse blank-line-separated field groups, charging the line budget."""
        groups, used = _field_groups(block, min(limit, self.lines_left))
        self.lines_left -= used
        return groups

    def original(
        self, report: _Part
    ) -> tuple[tuple[tuple[str, str], ...], str | None, str | None]:
        """Read the returned message's headers, Return-Path and Message-ID."""
        for part in self.leaves:
            if part is report or part.content_type not in _ORIGINAL_TYPES:
                continue
            # Some generators put a stray blank line before the returned headers.
            body = self.body(part).lstrip(b"\r\n")
            header_end, _ = _split_header(body, 0, len(body))
            fields = self.fields(body[:header_end], _MAX_HEADER_LINES)
            headers = tuple(
                (name, _text(value) or "")
                for name, value in fields[:_MAX_ORIGINAL_FIELDS]
            )
            return (
                headers,
                _address(_first(fields, "return-path")),
                _text(_first(fields, "message-id")),
            )
        return (), None, None


def parse_dsn(data: bytes) -> DeliveryReport | None:
    """Parse an RFC 3464 delivery status notification; None if it is not one."""
    message = _Message.parse(data)
    if message is None:
        return None
    found = _status_part(message)
    if found is None:
        return None
    part, groups = found
    per_message: dict[str, str] = {}
    if groups:
        per_message = _lookup(groups[0])
    recipients: list[DsnRecipient] = []
    for group in groups:
        for fields in _recipient_groups(group):
            recipient = _recipient(fields)
            if recipient is not None and len(recipients) < _MAX_RECIPIENTS:
                recipients.append(recipient)
    headers, return_path, message_id = message.original(part)
    return DeliveryReport(
        reporting_mta=_text(per_message.get("reporting-mta")),
        arrival_date=_text(per_message.get("arrival-date")),
        recipients=tuple(recipients),
        original_return_path=return_path,
        original_message_id=message_id,
        original_headers=headers,
    )


def _status_part(
    message: _Message,
) -> tuple[_Part, list[list[tuple[str, str]]]] | None:
    """Find the delivery-status part, tolerating one mislabelled as text/plain."""
    for part in message.leaves:
        if part.content_type in _STATUS_TYPES:
            return part, message.field_groups(message.body(part), _MAX_REPORT_LINES)
    for part in message.leaves:
        if (
            part.content_type == "text/plain"
            and part.parent_type == "multipart/report"
            and part.parent_params.get("report-type", "").lower() in _DSN_REPORT_TYPES
        ):
            body = message.body(part)
            if _RECIPIENT_LINE.search(body) is None:
                continue
            groups = message.field_groups(body, _MAX_REPORT_LINES)
            if any(
                "final-recipient" in names or "original-recipient" in names
                for names in ({name.lower() for name, _ in group} for group in groups)
            ):
                return part, groups
    return None


def _recipient_groups(
    group: list[tuple[str, str]],
) -> Iterator[list[tuple[str, str]]]:
    """Yield recipient groups, splitting ones whose blank separator was lost."""
    if not any(name.lower() in _RECIPIENT_FIELDS for name, _ in group):
        return
    current: list[tuple[str, str]] = []
    seen_final = False
    for name, value in group:
        if name.lower() == "final-recipient":
            if seen_final:
                yield current
                current = []
            seen_final = True
        current.append((name, value))
    yield current


def _recipient(fields: list[tuple[str, str]]) -> DsnRecipient | None:
    """Build a recipient, or None if no RFC 3463 status can be found."""
    lookup = _lookup(fields)
    diagnostic = _text(lookup.get("diagnostic-code"))
    status = _status(lookup.get("status"), diagnostic)
    if status is None:
        return None
    action = _action(lookup.get("action"))
    if action is None:
        action = _ACTION_FOR_CLASS[status[0]]
    return DsnRecipient(
        final_recipient=_address(lookup.get("final-recipient")),
        original_recipient=_address(lookup.get("original-recipient")),
        action=action,
        status=status,
        diagnostic_code=diagnostic,
        remote_mta=_text(lookup.get("remote-mta")),
    )


def _status(value: str | None, diagnostic: str | None) -> str | None:
    """Read an RFC 3463 code from Status, else from the diagnostic text."""
    match = _STATUS.match(value) if value is not None else None
    found = _EMBEDDED_STATUS.search(diagnostic) if diagnostic is not None else None
    # Exim and others report "5.0.0" (RFC 3463 "other or undefined") while the
    # remote server's text carries the real code, e.g. 5.2.2 for a full box.
    if match is None or (
        found is not None
        and found[1] == match[1]
        and int(match[2]) == int(match[3]) == 0
    ):
        match = found or match
    if match is not None:
        return f"{match[1]}.{int(match[2])}.{int(match[3])}"
    reply = _REPLY_CODE.match(diagnostic) if diagnostic is not None else None
    if reply is not None:
        return f"{reply[1]}.0.0"
    return None


def _action(value: str | None) -> str | None:
    """Return the recognised RFC 3464 action word, lower-cased."""
    match = _WORD.match(value) if value is not None else None
    if match is None:
        return None
    action = match[1].lower()
    return action if action in _ACTIONS else None


# --- MIME structure ------------------------------------------------------------


def _split_header(data: bytes, start: int, end: int) -> tuple[int, int]:
    """Return where an entity's header block ends and its body starts."""
    if data.startswith(b"\n", start, end):
        return start, start + 1
    if data.startswith(b"\r\n", start, end):
        return start, start + 2
    match = _BLANK_LINE.search(data, start, end)
    if match is None:
        return end, end
    return match.start(), match.end()


def _split_parts(
    data: bytes, start: int, end: int, boundary: bytes
) -> Iterator[tuple[int, int]]:
    """Yield body parts between RFC 2046 delimiter lines; a missing close is ok."""
    # The delimiter must fill its line but for transport padding; the line
    # break before it belongs to the delimiter, not to the preceding part.
    delimiter = re.compile(
        rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*\r?$", re.MULTILINE
    )
    part_start: int | None = None
    for match in delimiter.finditer(data, start, end):
        if part_start is not None:
            part_end = match.start()
            if part_end > part_start and data[part_end - 1] == 0x0A:
                part_end -= 1
                if part_end > part_start and data[part_end - 1] == 0x0D:
                    part_end -= 1
            yield part_start, part_end
        if match.group(1):
            return
        part_start = min(match.end() + 1, end)
    if part_start is not None:
        yield part_start, end


def _content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into a lower-case type and its parameters."""
    if value is None:
        return _DEFAULT_TYPE, {}
    if len(value) > _MAX_CONTENT_TYPE:
        return _OPAQUE_TYPE, {}
    segments: list[list[str]] = [[]]
    for match in _PARAM_TOKEN.finditer(value):
        token = match.group()
        if token == ";":
            if len(segments) > _MAX_PARAMS:
                break
            segments.append([])
        else:
            segments[-1].append(token)
    media_type = "".join(segments[0]).strip().lower()
    if not _MEDIA_TYPE.fullmatch(media_type):
        media_type = _DEFAULT_TYPE
    params: dict[str, str] = {}
    for segment in segments[1:]:
        name, equals, raw = "".join(segment).partition("=")
        name = name.strip().lower()
        if not equals or not name:
            continue
        raw = raw.strip()
        quoted = _QUOTED.match(raw)
        if quoted is not None:
            raw = _ESCAPE.sub(r"\1", quoted[1])
        params.setdefault(name, raw)
    return media_type, params


# --- Header fields -----------------------------------------------------------


def _field_groups(
    block: bytes, max_lines: int
) -> tuple[list[list[tuple[str, str]]], int]:
    """Parse blank-line-separated groups of header-style fields; count lines read."""
    groups: list[list[tuple[str, str]]] = []
    group: list[tuple[str, str]] = []
    name: str | None = None
    pieces: list[bytes] = []
    pos = 0
    size = len(block)
    lines = 0
    while pos < size and lines < max_lines:
        newline = block.find(b"\n", pos)
        if newline < 0:
            newline = size
        line = block[pos:newline]
        pos = newline + 1
        lines += 1
        stripped = line.strip()
        if stripped and line[:1] in (b" ", b"\t"):
            # A folded continuation; lines before the first field are noise.
            if name is not None:
                pieces.append(stripped)
            continue
        if name is not None:
            group.append((name, _join(pieces)))
            name = None
        if not stripped:
            if group:
                groups.append(group)
                group = []
            continue
        colon = line.find(b":")
        field = line[:colon].rstrip() if colon > 0 else b""
        if _FIELD_NAME.fullmatch(field):
            name = field.decode("ascii")
            pieces = [line[colon + 1 :].strip()]
    if name is not None:
        group.append((name, _join(pieces)))
    if group:
        groups.append(group)
    return groups, lines


def _join(pieces: list[bytes]) -> str:
    """Unfold a field's lines into one value, one space per fold."""
    return b" ".join(piece for piece in pieces if piece).decode(
        "utf-8", "surrogateescape"
    )


def _lookup(fields: list[tuple[str, str]]) -> dict[str, str]:
    """Map lower-cased field names to their first value."""
    lookup: dict[str, str] = {}
    for name, value in fields:
        lookup.setdefault(name.lower(), value)
    return lookup


def _first(fields: Sequence[tuple[str, str]], name: str) -> str | None:
    """Return the first value of a field, matching the name case-insensitively."""
    for field, value in fields:
        if field.lower() == name:
            return value
    return None


def _text(value: str | None) -> str | None:
    """Make a field value safe to store: valid UTF-8, no NULs; None if empty."""
    if value is None:
        return None
    # Values were decoded with surrogateescape so MIME boundaries round-trip;
    # stored values get replacement characters instead, and PostgreSQL text
    # cannot hold NUL.
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = text.replace("\x00", "\ufffd").strip()
    return text or None


def _address(value: str | None) -> str | None:
    """Strip an RFC 3464 address type ("rfc822;") and angle brackets."""
    text = _text(value)
    if text is None:
        return None
    kind, semicolon, rest = text.partition(";")
    if semicolon and "@" not in kind:
        text = rest.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text or None

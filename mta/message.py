"""Build, parse and normalise MIME messages on the accept path.

RFC 5322, RFC 2045-2047 and 2231 (MIME), RFC 5321 §4.5.3.1.6 (998-octet lines).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import idna

__all__ = [
    "INVALID",
    "MAX_MESSAGE_BYTES",
    "MAX_MIME_DEPTH",
    "MAX_MIME_PARTS",
    "MAX_RECIPIENTS",
    "REJECTED",
    "Address",
    "Attachment",
    "MessageError",
    "ParsedMessage",
    "build_simple",
    "finalize",
    "parse_address",
    "parse_address_list",
    "parse_raw",
    "recipients_of",
]

INVALID = "InvalidParameterValue"  # SES error code for malformed input
REJECTED = "MessageRejected"  # SES error code for content it refuses to send

MAX_MESSAGE_BYTES = 10_485_760  # SES's SendRawEmail limit (10 MiB)
MAX_RECIPIENTS = 50  # SES's limit on recipients of one message
MAX_MIME_DEPTH = 30  # deep nesting makes MIME parsers recurse (cpython #75630)
MAX_MIME_PARTS = 500  # part-count cap for the same reason
MAX_LINE = 998  # RFC 5321 §4.5.3.1.6: 1000 octets including the CRLF
_FOLD = 78  # RFC 5322 §2.1.1: lines SHOULD be no longer than 78 characters
_MAX_HEADER_BYTES = 1 << 20  # bounds header parsing; real ones are a few KB
_MAX_HEADER_FIELDS = 1000  # same; real messages carry tens of fields
_MAX_HEADER_ADDRESSES = 1000  # bounds address parsing of one To/Cc/Bcc header
_MAX_FALSE_DELIMITERS = 10_000  # "--boundary" lookalikes tolerated per multipart
_MAX_LOCAL = 64  # RFC 5321 §4.5.3.1.1
_MAX_DOMAIN = 253  # RFC 1035 §2.3.4: 255 octets on the wire are 253 as text
_MAX_ADDRESS = 254  # RFC 5321 §4.5.3.1.3: 256-octet path less the angle brackets
_MAX_ADDRESS_TEXT = 2048  # bounds parsing; a long display name plus 254 fits easily
_MAX_HEADER_NAME = 76  # so "Name: " fits within one 78-character line
_MAX_WORD = 75  # RFC 2047 §2: an encoded-word is at most 75 characters
_MAX_UNFOLDABLE = 900  # longest run without whitespace we fold onto one line
_MAX_FILENAME = 255  # the usual file-system limit on a file name
_PARAM_CHUNK = 50  # RFC 2231 continuation size; keeps parameter lines under 78

# C0 controls, DEL, C1 controls (including NEL U+0085), U+2028/U+2029 and lone
# surrogates: none of them can appear in a header or an address.
_BAD_STRICT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# The same but allowing HTAB, which is ordinary whitespace in a header value.
_BAD_VALUE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"  # RFC 5322 §3.2.3
_ATOM = re.compile(f"{_ATEXT}+")
_DOT_ATOM = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"  # RFC 5321 §4.1.2 Let-dig/Ldh-str
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext
_FIELD_NAME_B = re.compile(rb"[!-9;-~]+")
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 2045 §5.1 token
_MEDIA_TYPE = re.compile(
    rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\;]*\"))*)"
)
_CHARSET_NAME = re.compile(r"[A-Za-z0-9!#$%&'+^_`{}~-]{1,40}")  # RFC 2978 chars
_CONTENT_ID = re.compile(r"<?([!-;=?-~]{1,250})>?")  # printable ASCII but < and >
_MSGID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # RFC 5322 §3.6.4, without < >
_TAG = re.compile(r"[A-Za-z0-9_-]{1,255}")  # SES's rule for tag names and values

_WS_CHUNK = re.compile(r"[ \t]*[^ \t]+")
_WS_CHUNK_B = re.compile(rb"[ \t]*[^ \t]+")
_WSP_RUN_B = re.compile(rb"[ \t]*")
_SPECIAL = re.compile(r'["()<>,:;\\]')
_QUOTE_END = re.compile(r'["\\]')
_COMMENT_MARK = re.compile(r"[()\\]")
_MAILBOX_TOKEN = re.compile(r'[ \t]+|"(?:[^"\\]|\\.)*"|<[^<>]*>|[^ \t"()<>]+|\(')
_UNQUOTE = re.compile(r"\\(.)")
_UNQUOTE_B = re.compile(rb"\\(.)")
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([BbQq])\?([^?\s]*)\?=")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_CT_FIELD = re.compile(rb"(?im)^content-type:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_CTE_FIELD = re.compile(
    rb"(?im)^content-transfer-encoding:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)"
)
_BINARY_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*binary[ \t]*\r?$")
_MEDIA_TYPE_B = re.compile(
    rb"[ \t]*([!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+)"
)
_BOUNDARY = re.compile(
    rb'(?i);[ \t]*boundary[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))'
)

# Headers a SendEmail caller may not set: the builder writes them, finalize
# owns them, or the signer or receiving MTA does.
_RESERVED = frozenset(
    "from to cc bcc reply-to subject message-id date mime-version dkim-signature "
    "return-path".split()
)
_IDENTITY = frozenset({b"", b"7bit", b"8bit", b"binary"})  # RFC 2045 §6.1
# Every character here must encode to itself, so CRLF, "=" and boundaries keep
# their meaning in the encoded body.
_ASCII_PROBE = "".join(map(chr, range(0x20, 0x7F))) + "\t\r\n"
_ASCII_PROBE_BYTES = _ASCII_PROBE.encode("ascii")
_ESCAPING_CODECS = frozenset({"raw-unicode-escape", "unicode-escape"})
# RFC 2231 §7 attribute-char: what may stay unescaped in an extended value.
_ATTR_CHARS = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
)
_DAYS = "Mon Tue Wed Thu Fri Sat Sun".split()  # RFC 5322 §3.3 day-name
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()  # month


class MessageError(Exception):
    """Input SES would refuse: ``code`` is the SES error code, ``message`` why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[MessageError], tuple[str, str]]:
        """Pickle with both arguments so the error survives a worker boundary."""
        return (type(self), (self.code, self.message))


def _bad(message: str) -> MessageError:
    """Return an InvalidParameterValue error."""
    return MessageError(INVALID, message)


# --------------------------------------------------------------------- addresses


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: decoded display name, ASCII local part, lower-case A-label."""

    display_name: str
    local: str
    domain: str

    def __post_init__(self) -> None:
        """Refuse values that could not be written safely into a header."""
        if _BAD_STRICT.search(self.display_name):
            raise _bad("Display name contains a control character.")
        if len(self.local) > _MAX_LOCAL or not _DOT_ATOM.fullmatch(self.local):
            raise _bad("Local address contains illegal character.")
        if len(self.domain) > _MAX_DOMAIN or not _DOMAIN.fullmatch(self.domain):
            raise _bad("Domain contains illegal character.")

    @property
    def address(self) -> str:
        """Return the bare addr-spec ``local@domain``."""
        return f"{self.local}@{self.domain}"

    def formatted(self) -> str:
        """Return the mailbox as RFC 5322 text, encoding the display name if needed."""
        return " ".join(_mailbox_tokens(self))


def parse_address(text: str) -> Address:
    """Parse exactly one mailbox, refusing anything ambiguous or unsafe."""
    if len(text) > _MAX_ADDRESS_TEXT:
        raise _bad(f"Address is longer than {_MAX_ADDRESS_TEXT} characters.")
    if _BAD_STRICT.search(text):
        raise _bad("Address contains a control character.")
    segments = _segments(text, groups=False)
    if len(segments) != 1:
        raise _bad("Address must contain exactly one mailbox.")
    address = _mailbox(segments[0])
    if address is None:
        raise _bad("Address is empty.")
    return address


def parse_address_list(texts: Iterable[str]) -> list[Address]:
    """Parse each string as exactly one mailbox."""
    return [parse_address(text) for text in texts]


def _segments(text: str, *, groups: bool) -> list[str]:
    """Split an address list into one string per mailbox, dropping group names."""
    out: list[str] = []
    start = pos = 0
    in_angle = in_group = False
    while (match := _SPECIAL.search(text, pos)) is not None:
        i = match.start()
        char = text[i]
        if char == '"':
            pos = _skip_quoted(text, i)
            continue
        if char == "(":
            pos = _skip_comment(text, i)
            continue
        pos = i + 1
        if char == "<":
            if in_angle:
                raise _bad("Address contains a nested '<'.")
            in_angle = True
        elif char == ">":
            if not in_angle:
                raise _bad("Missing '<' in address.")
            in_angle = False
        elif in_angle:
            continue  # the addr-spec parser judges what is inside <...>
        elif char == ",":
            out.append(text[start:i])
            start = pos
        elif char == ":":
            if not groups:
                raise _bad("Group syntax is not allowed in an address.")
            if in_group:
                raise _bad("Nested group in address list.")
            if "@" in text[start:i]:
                raise _bad("Group name contains '@'.")
            in_group = True
            start = pos
        elif char == ";":
            if not in_group:
                raise _bad("Illegal semicolon, not in group.")
            out.append(text[start:i])
            start = pos
            in_group = False
        else:
            raise _bad(f"Illegal character {char!r} in address.")
    if in_angle:
        raise _bad("Missing '>' in address.")
    if in_group:
        raise _bad("Missing ';' after group.")
    out.append(text[start:])
    return out


def _skip_quoted(text: str, i: int) -> int:
    """Return the index just past the quoted-string starting at text[i]."""
    pos = i + 1
    while (match := _QUOTE_END.search(text, pos)) is not None:
        if match.group() == "\\":
            pos = match.end() + 1
            continue
        return match.end()
    raise _bad("Missing '\"' in address.")


def _skip_comment(text: str, i: int) -> int:
    """Return the index just past the (possibly nested) comment at text[i]."""
    depth = 0
    pos = i
    while (match := _COMMENT_MARK.search(text, pos)) is not None:
        mark = match.group()
        pos = match.end()
        if mark == "\\":
            pos += 1
        elif mark == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return pos
    raise _bad("Missing ')' in address.")


def _mailbox(segment: str) -> Address | None:
    """Parse one mailbox (name-addr or addr-spec); None if only CFWS."""
    tokens: list[str] = []  # " " stands for any run of whitespace or comments
    pos = 0
    while pos < len(segment):
        match = _MAILBOX_TOKEN.match(segment, pos)
        if match is None:
            raise _bad("Illegal address.")
        token = match.group()
        if token == "(":
            pos = _skip_comment(segment, pos)
            token = " "
        else:
            pos = match.end()
            if token[0] in " \t":
                token = " "
        if token != " " or (tokens and tokens[-1] != " "):
            tokens.append(token)
    if tokens and tokens[-1] == " ":
        tokens.pop()
    if not tokens:
        return None
    angles = [i for i, token in enumerate(tokens) if token[0] == "<"]
    if len(angles) > 1:
        raise _bad("Address contains more than one '<...>'.")
    if angles:
        at = angles[0]
        if at != len(tokens) - 1:
            raise _bad("Illegal text after '>' in address.")
        display = _phrase(tokens[:at])
        local, domain = _addr_spec(tokens[at][1:-1].strip(" \t"))
    else:
        if " " in tokens:
            raise _bad("Local address contains control or whitespace.")
        display = ""
        local, domain = _addr_spec("".join(tokens))
    return Address(display, local, domain)


def _phrase(tokens: list[str]) -> str:
    """Return the decoded display name spelled by phrase tokens."""
    words = [_unquote(t) if t[0] == '"' else t for t in tokens]
    # Controls can only come from encoded-words here (the text was checked),
    # so neutralise them rather than refuse mail from odd but real clients.
    return _BAD_STRICT.sub("\ufffd", _decode_words("".join(words).strip(" ")))


def _unquote(quoted: str) -> str:
    """Return the content of a quoted-string."""
    return _UNQUOTE.sub(r"\1", quoted[1:-1])


def _addr_spec(spec: str) -> tuple[str, str]:
    """Split and validate an addr-spec into (local part, A-label domain)."""
    if not spec:
        raise _bad("Missing local name.")
    if spec[0] == "@":
        if ":" in spec:
            raise _bad("Source routes are not allowed in an address.")
        raise _bad("Missing local name.")
    if spec[0] == '"':
        end = _skip_quoted(spec, 0)
        local = _unquote(spec[:end])
        if spec[end : end + 1] != "@":
            raise _bad("Missing final '@domain'.")
        domain = spec[end + 1 :]
    else:
        at = spec.rfind("@")
        if at < 0:
            raise _bad("Missing final '@domain'.")
        local, domain = spec[:at], spec[at + 1 :]
    if not local:
        raise _bad("Missing local name.")
    if not _DOT_ATOM.fullmatch(local):
        raise _bad(_local_problem(local))
    if len(local) > _MAX_LOCAL:
        raise _bad(f"Local address is longer than {_MAX_LOCAL} characters.")
    domain = _domain(domain)
    if len(local) + 1 + len(domain) > _MAX_ADDRESS:
        raise _bad(f"Address is longer than {_MAX_ADDRESS} characters.")
    return local, domain


def _local_problem(local: str) -> str:
    """Return the error sentence for a local part that is not a dot-atom."""
    if local.isascii():
        if local.startswith("."):
            return "Local address starts with dot."
        if local.endswith("."):
            return "Local address ends with dot."
        if ".." in local:
            return "Local address contains dot-dot."
    return "Local address contains illegal character."


def _domain(domain: str) -> str:
    """Return the domain as a validated lower-case A-label without a trailing dot."""
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain:
        raise _bad("Missing domain.")
    if domain[0] == "[":
        raise _bad("Domain literals are not allowed.")
    if not domain.isascii():
        try:
            alabel = idna.encode(domain, uts46=True).decode("ascii")
            # UTS 46 silently drops or maps some characters (soft hyphen,
            # full-width letters); refuse those rather than rewrite the domain.
            same = idna.decode(alabel) == domain.lower()
        except (idna.IDNAError, UnicodeError):
            same = False
        if not same:
            raise _bad("Domain contains illegal character.")
        domain = alabel
    domain = domain.lower()
    if len(domain) > _MAX_DOMAIN or not _DOMAIN.fullmatch(domain):
        if domain.startswith("."):
            raise _bad("Domain starts with dot.")
        if ".." in domain:
            raise _bad("Domain contains dot-dot.")
        raise _bad("Domain contains illegal character.")
    if "xn--" in domain:
        try:
            idna.decode(domain)
        except (idna.IDNAError, UnicodeError):
            raise _bad("Domain contains an invalid internationalised label.") from None
    return domain


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words, joining adjacent ones as §6.2 says."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending: tuple[str, bytearray] | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[pos : match.start()]
        pos = match.end()
        charset, kind, payload = match.groups()
        try:
            if kind in "Bb":
                data = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                data = binascii.a2b_qp(payload.encode("ascii"), header=True)
        except (binascii.Error, UnicodeEncodeError, ValueError):
            data = None
        if gap and (pending is None or gap.strip(" \t")):
            out.append(_flush(pending))
            pending = None
            out.append(gap)
        if data is None:
            out.append(_flush(pending))
            pending = None
            out.append(match.group())
        elif pending is not None and pending[0] == charset.lower():
            pending[1].extend(data)
        else:
            out.append(_flush(pending))
            pending = (charset.lower(), bytearray(data))
    out.append(_flush(pending))
    out.append(text[pos:])
    return "".join(out)


def _flush(pending: tuple[str, bytearray] | None) -> str:
    """Decode the bytes gathered from adjacent encoded-words."""
    if pending is None:
        return ""
    charset, data = pending
    try:
        return data.decode(charset, "replace")
    except (LookupError, UnicodeError):
        # Unknown charsets, and codecs (idna, punycode) that refuse "replace".
        return data.decode("utf-8", "replace")


# ---------------------------------------------------------------- header writing


def _mailbox_tokens(address: Address) -> list[str]:
    """Return the words of a mailbox, between which a header may be folded."""
    if not address.display_name:
        return [address.address]
    return [*_phrase_tokens(address.display_name), f"<{address.address}>"]


def _phrase_tokens(name: str) -> list[str]:
    """Return a display name as atoms, a quoted-string or encoded-words.

    The result is split at spaces so a header can fold there (RFC 5322 allows
    folding inside a quoted-string); joining it with spaces gives the phrase.
    """
    if name.isascii() and "=?" not in name:
        words = name.split(" ")
        if not all(_ATOM.fullmatch(word) for word in words):
            quoted = name.replace("\\", "\\\\").replace('"', '\\"')
            words = f'"{quoted}"'.split(" ")
        if max(map(len, words)) <= _MAX_UNFOLDABLE:
            return words
    return _encoded_words(name, "UTF-8")


def _encoded_words(text: str, charset: str) -> list[str]:
    """Spell text as RFC 2047 "B" encoded-words of at most 75 characters each."""
    prefix = f"=?{charset}?B?"
    room = (_MAX_WORD - len(prefix) - 2) // 4 * 3  # raw octets per word
    chunks: list[bytes] = []
    if charset.lower() in ("utf-8", "utf8"):
        data = text.encode("utf-8")
        start = 0
        while start < len(data):
            end = min(start + room, len(data))
            while end < len(data) and 0x80 <= data[end] < 0xC0:
                end -= 1  # a word must hold whole characters (RFC 2047 §5)
            chunks.append(data[start:end])
            start = end
    else:
        start = used = 0
        for i, char in enumerate(text):
            # Encoding one character alone over-counts stateful charsets such
            # as ISO-2022-JP (escape sequences), so a word never overflows.
            size = len(char.encode(charset))
            if used + size > room and i > start:
                chunks.append(text[start:i].encode(charset))
                start, used = i, 0
            used += size
        if start < len(text):
            chunks.append(text[start:].encode(charset))
    return [prefix + base64.b64encode(chunk).decode("ascii") + "?=" for chunk in chunks]


def _text_pieces(value: str) -> list[str] | None:
    """Split ASCII text before whitespace runs; None if a run is too long to fold."""
    pieces = _WS_CHUNK.findall(value)
    if not pieces:
        return [" " + value] if value else []
    tail = len(value) - len(value.rstrip(" \t"))
    if tail:
        pieces[-1] += value[-tail:]
    if max(map(len, pieces)) > _MAX_UNFOLDABLE:
        return None
    pieces[0] = " " + pieces[0]
    return pieces


def _fold(name: str, pieces: Sequence[str]) -> str:
    """Return ``name:`` and pieces (each starting with whitespace) as a folded field."""
    out = [name, ":"]
    width = first = len(name) + 1
    for piece in pieces:
        # Never fold before bare whitespace: that would leave a blank line.
        if width > first and width + len(piece) > _FOLD and piece.strip(" \t"):
            out.append("\r\n")
            width = 0
        out.append(piece)
        width += len(piece)
        if width > MAX_LINE:
            raise _bad(f"Illegal header value: {name} cannot be folded to 998 octets.")
    out.append("\r\n")
    return "".join(out)


def _address_field(name: str, addresses: Sequence[Address]) -> str:
    """Return an address-list header field."""
    pieces: list[str] = []
    last = len(addresses) - 1
    for i, address in enumerate(addresses):
        tokens = _mailbox_tokens(address)
        if i < last:
            tokens[-1] += ","
        pieces.extend(" " + token for token in tokens)
    return _fold(name, pieces)


def _unstructured_field(name: str, value: str, charset: str | None) -> str:
    """Return Subject-like text as a field, encoding it unless plain short ASCII."""
    if _BAD_VALUE.search(value):
        raise _bad(f"Illegal header value: {name} contains a control character.")
    pieces = None
    # Literal "=?" would be decoded by readers, so such text is encoded too.
    if value.isascii() and "=?" not in value:
        pieces = _text_pieces(value)
    if pieces is None:
        label = "UTF-8" if charset is None else _charset(charset)
        if label != "UTF-8" and not _round_trips(value, label):
            # Some charsets map characters lossily (Shift_JIS turns U+00A5 into
            # a backslash); UTF-8 keeps the text the caller gave.
            label = "UTF-8"
        try:
            pieces = [" " + word for word in _encoded_words(value, label)]
        except UnicodeError:
            raise _bad(f"{name} cannot be encoded in charset {label!r}.") from None
    return _fold(name, pieces)


def _round_trips(value: str, charset: str) -> bool:
    """Whether text survives encoding to a charset and back unchanged."""
    try:
        return value.encode(charset).decode(charset) == value
    except UnicodeError:
        return True  # the encoder's own error is reported by the caller


def _custom_field(name: str, value: str) -> str:
    """Return a caller-supplied header field after validating it."""
    if len(name) > _MAX_HEADER_NAME or not _FIELD_NAME.fullmatch(name):
        raise _bad(f"Illegal header name: {name[:_MAX_HEADER_NAME]!r}.")
    lowered = name.lower()
    # X-SES-* are control headers: SendEmail output is not passed through
    # finalize, so one set here would reach recipients.
    if lowered in _RESERVED or lowered.startswith(("content-", "x-ses-")):
        raise _bad(f"Header {name!r} cannot be set on SendEmail.")
    if _BAD_VALUE.search(value):
        raise _bad(f"Illegal header value: {name} contains a control character.")
    if value.isascii():
        pieces = _text_pieces(value)
        if pieces is None:
            raise _bad(f"Illegal header value: {name} cannot be folded to 998 octets.")
    else:
        pieces = [" " + word for word in _encoded_words(value, "UTF-8")]
    return _fold(name, pieces)


@functools.lru_cache(maxsize=64)
def _charset(name: str) -> str:
    """Return name if it is an ASCII-compatible charset Python knows, else raise."""
    if not _CHARSET_NAME.fullmatch(name):
        raise _bad(f"Unsupported charset {name[:40]!r}.")
    try:
        same = _ASCII_PROBE.encode(name) == _ASCII_PROBE_BYTES
        escaping = codecs.lookup(name).name in _ESCAPING_CODECS
    except (LookupError, UnicodeError):
        same, escaping = False, True
    if not same or escaping:
        raise _bad(f"Unsupported charset {name!r}.")
    return name


# ------------------------------------------------------------------ body writing


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file for SendEmail; ``disposition`` is "attachment" or "inline"."""

    filename: str
    content_type: str
    data: bytes
    disposition: str = "attachment"
    content_id: str | None = None


@dataclass(slots=True)
class _Entity:
    """A MIME entity being built: header lines (ASCII), body and its encoding."""

    headers: str
    body: bytes
    encoding: str


def _long_lines(data: bytes) -> bool:
    """Return whether a CRLF-delimited chunk has a line over 998 octets."""
    return len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE


def _qp(data: bytes) -> bytes:
    """Quoted-printable encode CRLF-only text with CRLF soft breaks."""
    out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
    if b"\n" not in data:
        # b2a_qp copies the input's line ending; without one it uses bare LF.
        out = out.replace(b"=\n", b"=\r\n")
    # Keep "From " off line starts so mbox-style mangling cannot alter the body.
    if out.startswith(b"From "):
        out = b"=46" + out[1:]
    return out.replace(b"\r\nFrom ", b"\r\n=46rom ")


def _b64(data: bytes) -> bytes:
    """Base64 encode in 76-character CRLF lines."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _text_entity(subtype: str, text: str, charset: str | None, what: str) -> _Entity:
    """Return a text/<subtype> part, 7bit if plain short ASCII else quoted-printable."""
    label = "UTF-8" if charset is None else _charset(charset)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    try:
        data = text.replace("\n", "\r\n").encode(label)
    except UnicodeError:
        raise _bad(f"{what} cannot be encoded in charset {label!r}.") from None
    if (
        data.isascii()
        and b"\x00" not in data
        and not _long_lines(data)
        and not data.startswith(b"From ")
        and b"\nFrom " not in data
    ):
        body, encoding = data, "7bit"
    else:
        body, encoding = _qp(data), "quoted-printable"
    headers = (
        f"Content-Type: text/{subtype}; charset={label}\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n"
    )
    return _Entity(headers, body, encoding)


def _param_pieces(attribute: str, value: str) -> list[str]:
    """Return a parameter as one quoted value or RFC 2231 encoded continuations."""
    if value.isascii():
        quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= _PARAM_CHUNK:
            return [f"{attribute}={quoted}"]
    encoded = "".join(
        chr(b) if b in _ATTR_CHARS else f"%{b:02X}" for b in value.encode("utf-8")
    )
    if len(encoded) <= _PARAM_CHUNK:
        return [f"{attribute}*=UTF-8''{encoded}"]
    chunks: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _PARAM_CHUNK, len(encoded))
        # Never split a %XX escape: back up to before a "%" in the last two.
        cut = encoded.rfind("%", end - 2, end)
        if cut > start and end < len(encoded):
            end = cut
        chunks.append(encoded[start:end])
        start = end
    pieces = [f"{attribute}*0*=UTF-8''{chunks[0]}"]
    pieces.extend(f"{attribute}*{i}*={chunk}" for i, chunk in enumerate(chunks) if i)
    return pieces


def _param_field(name: str, value: str, params: list[str]) -> str:
    """Return ``name: value; p1; p2`` folded between parameters."""
    items = [value, *params]
    pieces = [" " + item + ";" for item in items[:-1]]
    pieces.append(" " + items[-1])
    return _fold(name, pieces)


def _attachment_entity(attachment: Attachment) -> _Entity:
    """Return a base64 part for an attachment after validating its metadata."""
    filename = attachment.filename
    if _BAD_STRICT.search(filename):
        raise _bad("Attachment file name contains a control character.")
    if _BAD_STRICT.search(attachment.content_type):
        raise _bad("Attachment content type contains a control character.")
    if len(filename) > _MAX_FILENAME:
        raise _bad(f"Attachment file name is longer than {_MAX_FILENAME} characters.")
    match = _MEDIA_TYPE.fullmatch(attachment.content_type.strip(" "))
    if match is None:
        raise _bad(f"Illegal attachment content type {attachment.content_type[:80]!r}.")
    maintype = match.group(1).lower()
    if maintype in ("multipart", "message"):
        raise _bad(f"Attachment content type {maintype}/* is not supported.")
    params = [p.strip() for p in match.group(3).split(";") if p.strip()]
    if attachment.disposition not in ("attachment", "inline"):
        raise _bad(f"Illegal attachment disposition {attachment.disposition[:40]!r}.")
    lines = []
    type_params = list(params)
    named = any(p.partition("=")[0].partition("*")[0].lower() == "name" for p in params)
    if filename and not named:
        type_params += _param_pieces("name", filename)
    media = f"{match.group(1)}/{match.group(2)}"
    lines.append(_param_field("Content-Type", media, type_params))
    disposition_params = _param_pieces("filename", filename) if filename else []
    lines.append(
        _param_field("Content-Disposition", attachment.disposition, disposition_params)
    )
    if attachment.content_id is not None:
        cid = _CONTENT_ID.fullmatch(attachment.content_id)
        if cid is None:
            raise _bad("Illegal attachment content ID.")
        lines.append(f"Content-ID: <{cid.group(1)}>\r\n")
    lines.append("Content-Transfer-Encoding: base64\r\n")
    return _Entity("".join(lines), _b64(attachment.data), "base64")


def _multipart(subtype: str, children: Sequence[_Entity]) -> _Entity:
    """Return a multipart/<subtype> entity with a boundary absent from its parts."""
    while True:
        # "=_" cannot occur in quoted-printable or base64 output, so only
        # 7bit parts can contain it; they are checked below.
        boundary = "=_" + secrets.token_hex(12)
        marker = boundary.encode("ascii")
        if not any(c.encoding == "7bit" and marker in c.body for c in children):
            break
    chunks: list[bytes] = []
    for child in children:
        chunks += [b"--", marker, b"\r\n", child.headers.encode("ascii"), b"\r\n"]
        chunks += [child.body, b"\r\n"]
    chunks += [b"--", marker, b"--\r\n"]
    headers = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n'
    return _Entity(headers, b"".join(chunks), "7bit")


def build_simple(
    *,
    source: Address,
    to: Sequence[Address],
    cc: Sequence[Address],
    reply_to: Sequence[Address],
    subject: str,
    subject_charset: str | None,
    text: str | None,
    text_charset: str | None,
    html: str | None,
    html_charset: str | None,
    headers: Sequence[tuple[str, str]] = (),
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """Return the wire bytes of a SendEmail message (no Bcc, Message-ID or Date)."""
    head = [_address_field("From", [source])]
    if to:
        head.append(_address_field("To", to))
    if cc:
        head.append(_address_field("Cc", cc))
    if reply_to:
        head.append(_address_field("Reply-To", reply_to))
    head.append(_unstructured_field("Subject", subject, subject_charset))
    head.extend(_custom_field(name, value) for name, value in headers)
    head.append("MIME-Version: 1.0\r\n")

    # Inline parts with a Content-ID belong beside the HTML they illustrate.
    inline = [a for a in attachments if html is not None and _is_related(a)]
    attached = [a for a in attachments if html is None or not _is_related(a)]
    alternatives: list[_Entity] = []
    if text is not None or (html is None and not attached):
        alternatives.append(
            _text_entity("plain", text or "", text_charset, "Text body")
        )
    if html is not None:
        html_part = _text_entity("html", html, html_charset, "HTML body")
        if inline:
            html_part = _multipart(
                "related", [html_part, *map(_attachment_entity, inline)]
            )
        alternatives.append(html_part)
    parts = alternatives
    if len(alternatives) == 2:
        parts = [_multipart("alternative", alternatives)]
    if attached:
        parts = [_multipart("mixed", [*parts, *map(_attachment_entity, attached)])]
    entity = parts[0]
    head.append(entity.headers)
    body = entity.body
    if body and not body.endswith(b"\r\n"):
        # A quoted-printable soft break ends the message without adding a newline.
        body += b"=\r\n" if entity.encoding == "quoted-printable" else b"\r\n"
    return "".join(head).encode("ascii") + b"\r\n" + body


def _is_related(attachment: Attachment) -> bool:
    """Return whether an attachment is an inline image referenced by Content-ID."""
    return attachment.disposition == "inline" and bool(attachment.content_id)


# ----------------------------------------------------------------- raw messages


@dataclass(slots=True)
class ParsedMessage:
    """What the accept path needs from a raw message, plus its normalised bytes."""

    from_: list[Address]
    sender: Address | None
    reply_to: list[Address]
    to: list[Address]
    cc: list[Address]
    bcc: list[Address]
    return_path: Address | None
    subject: str | None
    header_message_id: str | None
    configuration_set: str | None
    tags: dict[str, str]
    raw: bytes


def _normalise(data: bytes) -> tuple[bytes, bool]:
    """Turn bare CRs and LFs into CRLF, end with CRLF; say if any was bare."""
    rewritten = False
    if b"\r" not in data:
        if b"\n" in data:
            data = data.replace(b"\n", b"\r\n")
            rewritten = True
    else:
        breaks = len(data) - len(data.translate(None, b"\r\n"))
        # Only CRLF pairs present exactly when the CR and LF octets all pair up.
        if breaks != 2 * data.count(b"\r\n"):
            data = _LINE_BREAK.sub(b"\r\n", data)
            rewritten = True
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data, rewritten


def _split_head(msg: bytes) -> tuple[int, int]:
    """Return the end of the header section and the start of the body."""
    if msg.startswith(b"\r\n"):
        return 0, 2
    end = msg.find(b"\r\n\r\n")
    if end < 0:
        return len(msg), len(msg)
    return end + 2, end + 4


def _fields(section: bytes) -> list[tuple[bytes, bytes]]:
    """Split a header section into (lower-case name, whole field with its CRLFs)."""
    fields: list[tuple[bytes, bytes]] = []
    lines = section.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    name = b""
    current: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not current:
                raise _bad("Header section starts with a continuation line.")
            current.append(line)
            continue
        if current:
            fields.append((name, b"\r\n".join(current) + b"\r\n"))
        colon = line.find(b":")
        if colon <= 0 or not _FIELD_NAME_B.fullmatch(line, 0, colon):
            shown = line[:60].decode("latin-1")
            raise _bad(f"Illegal header line {shown!r}.")
        if len(fields) >= _MAX_HEADER_FIELDS:
            raise _bad(f"Message has more than {_MAX_HEADER_FIELDS} header fields.")
        name = line[:colon].lower()
        current = [line]
    if current:
        fields.append((name, b"\r\n".join(current) + b"\r\n"))
    return fields


def _check_head(msg: bytes, end: int) -> None:
    """Apply the size and NUL limits to a header section."""
    if end > _MAX_HEADER_BYTES:
        raise _bad(f"Header section is larger than {_MAX_HEADER_BYTES} bytes.")
    if msg.find(b"\x00", 0, end) >= 0:
        raise _bad("Header section contains a NUL character.")


def _value(field: bytes) -> str:
    """Return a field's unfolded value as text."""
    raw = field[field.index(b":") + 1 :].replace(b"\r\n", b"").strip(b" \t")
    return raw.decode("utf-8", "replace")


def _header_addresses(name: str, value: str, *, groups: bool) -> list[Address]:
    """Parse an address-list header, naming the header in any error."""
    value = value.replace("\t", " ")
    try:
        if _BAD_STRICT.search(value):
            raise _bad("Address contains a control character.")
        segments = _segments(value, groups=groups)
        if len(segments) > _MAX_HEADER_ADDRESSES:
            raise _bad(f"More than {_MAX_HEADER_ADDRESSES} addresses.")
        found = [_mailbox(segment) for segment in segments]
    except MessageError as exc:
        raise _bad(f"{exc.message.rstrip('.')} in header '{name}'.") from None
    return [address for address in found if address is not None]


def _single(got: dict[bytes, list[bytes]], name: str) -> str | None:
    """Return the value of a header that may appear at most once."""
    found = got.get(name.lower().encode("ascii"))
    if not found:
        return None
    if len(found) > 1:
        raise _bad(f"Duplicate header '{name}'.")
    return _value(found[0])


def _tags(values: list[bytes]) -> dict[str, str]:
    """Parse X-SES-MESSAGE-TAGS values of the form ``name=value, name=value``."""
    tags: dict[str, str] = {}
    for field in values:
        for item in _value(field).split(","):
            if not item.strip():
                continue
            name, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not _TAG.fullmatch(name) or not _TAG.fullmatch(value):
                raise _bad(
                    f"Invalid message tag {item.strip()[:80]!r} in X-SES-MESSAGE-TAGS."
                )
            if name in tags:
                raise _bad(f"Duplicate message tag {name!r} in X-SES-MESSAGE-TAGS.")
            tags[name] = value
    return tags


# The header fields parse_raw reads.
_WANTED = frozenset(
    b"from sender reply-to to cc bcc return-path subject message-id content-type "
    b"content-transfer-encoding x-ses-configuration-set x-ses-message-tags".split()
)


def parse_raw(data: bytes, *, max_bytes: int) -> ParsedMessage:
    """Parse a SendRawEmail/SMTP message, enforcing size, header and MIME limits."""
    if len(data) > max_bytes:
        raise _bad(
            f"Message length is more than {max_bytes} bytes long: '{len(data)}'."
        )
    msg, rewritten = _normalise(data)
    head_end, body_start = _split_head(msg)
    _check_head(msg, head_end)
    got: dict[bytes, list[bytes]] = {}
    for name, field in _fields(msg[:head_end]):
        if name in _WANTED:
            got.setdefault(name, []).append(field)

    def addresses(name: str, *, groups: bool = True) -> list[Address]:
        """Return the addresses of every field called name."""
        found: list[Address] = []
        for field in got.get(name.lower().encode("ascii"), ()):
            found += _header_addresses(name, _value(field), groups=groups)
        return found

    if not got.get(b"from"):
        raise _bad("Missing required header 'From'.")
    if len(got[b"from"]) > 1:
        raise _bad("Duplicate header 'From'.")
    from_ = addresses("From", groups=False)
    if not from_:
        raise _bad("Header 'From' contains no address.")
    sender = None
    if (value := _single(got, "Sender")) is not None:
        found = _header_addresses("Sender", value, groups=False)
        if len(found) != 1:
            raise _bad("Header 'Sender' must contain exactly one address.")
        sender = found[0]
    return_path = None
    if (value := _single(got, "Return-Path")) is not None:
        inner = value[1:-1] if value.startswith("<") and value.endswith(">") else value
        if inner.strip():
            found = _header_addresses("Return-Path", inner, groups=False)
            if len(found) != 1:
                raise _bad("Header 'Return-Path' must contain exactly one address.")
            return_path = found[0]
    subjects = got.get(b"subject")
    configuration_set = _single(got, "X-SES-CONFIGURATION-SET") or None
    message_ids = got.get(b"message-id")

    _Walker(msg).entity(
        -1,
        _first_value(got.get(b"content-type")),
        _first_value(got.get(b"content-transfer-encoding")),
        body_start,
        len(msg),
        0,
        b"text/plain",
    )
    if rewritten and _BINARY_CTE.search(msg):
        # Rewriting bare CR/LF corrupts a binary part, so refuse rather than guess.
        raise _bad("Content-Transfer-Encoding binary requires CRLF line endings.")
    return ParsedMessage(
        from_=from_,
        sender=sender,
        reply_to=addresses("Reply-To"),
        to=addresses("To"),
        cc=addresses("Cc"),
        bcc=addresses("Bcc"),
        return_path=return_path,
        subject=_decode_words(_value(subjects[0])) if subjects else None,
        header_message_id=_value(message_ids[0]) if message_ids else None,
        configuration_set=configuration_set,
        tags=_tags(got.get(b"x-ses-message-tags", [])),
        raw=msg,
    )


def recipients_of(parsed: ParsedMessage) -> list[Address]:
    """Return To, Cc and Bcc in order without duplicates (possibly none).

    Callers refuse an empty list ("Missing required header 'To'.") and apply
    their recipient limit ("Recipient count exceeds 50."), as SES does.
    """
    seen: set[str] = set()
    out: list[Address] = []
    for address in (*parsed.to, *parsed.cc, *parsed.bcc):
        # Local parts are case-sensitive in theory (RFC 5321 §2.4) but not in
        # practice; one copy per mailbox is what a sender means.
        key = address.address.lower()
        if key not in seen:
            seen.add(key)
            out.append(address)
    return out


# -------------------------------------------------------------------- MIME walk

_RAW, _HEAD, _BODY, _FILL = range(4)  # segment kinds; _FILL is preamble/epilogue


@dataclass(slots=True)
class _Segment:
    """A byte range of the body; bodies point at their header segment (-1: top)."""

    kind: int
    start: int
    end: int
    head: int = -1
    maintype: bytes = b""
    encoding: bytes = b""


def _first_value(fields: list[bytes] | None) -> bytes | None:
    """Return the raw value of the first field in a list."""
    if not fields:
        return None
    field = fields[0]
    return field[field.index(b":") + 1 :]


def _media_type(value: bytes | None, default: bytes) -> tuple[bytes, bytes | None]:
    """Return the lower-case media type and the multipart boundary, if any."""
    if value is None:
        return default, None
    value = value.replace(b"\r\n", b"")
    match = _MEDIA_TYPE_B.match(value)
    if match is None:
        return default, None
    media = match.group(1).lower()
    boundary = None
    if media.startswith(b"multipart/"):
        found = _BOUNDARY.search(value, match.end())
        if found is not None:
            quoted = found.group(1)
            raw = (
                _UNQUOTE_B.sub(rb"\1", quoted) if quoted is not None else found.group(2)
            )
            boundary = raw.rstrip() or None
    return media, boundary


def _encoding(value: bytes | None) -> bytes:
    """Return a Content-Transfer-Encoding value, lower-cased and trimmed."""
    if value is None:
        return b""
    return value.replace(b"\r\n", b"").strip(b" \t").lower()


class _Walker:
    """Tile a message body with segments, enforcing the MIME depth and part caps."""

    def __init__(self, msg: bytes) -> None:
        self.msg = msg
        self.parts = 0
        self.segments: list[_Segment] = []

    def entity(
        self,
        head: int,
        content_type: bytes | None,
        encoding: bytes | None,
        start: int,
        end: int,
        depth: int,
        default: bytes,
    ) -> None:
        """Walk the body msg[start:end] of an entity whose header is segment head."""
        media, boundary = _media_type(content_type, default)
        cte = _encoding(encoding)
        if boundary is not None:
            digest = media == b"multipart/digest"
            if self._multipart(boundary, start, end, depth, digest):
                return
        elif media in (b"message/rfc822", b"message/global") and cte in _IDENTITY:
            self._child(start, end, depth + 1, b"text/plain")
            return
        maintype = media.partition(b"/")[0]
        self.segments.append(_Segment(_BODY, start, end, head, maintype, cte))

    def _child(self, start: int, end: int, depth: int, default: bytes) -> None:
        """Walk one body part (or embedded message) occupying msg[start:end]."""
        self.parts += 1
        if self.parts > MAX_MIME_PARTS:
            raise _bad(f"Message has more than {MAX_MIME_PARTS} MIME parts.")
        if depth > MAX_MIME_DEPTH:
            raise _bad(f"MIME parts are nested more than {MAX_MIME_DEPTH} levels deep.")
        msg = self.msg
        if end - start >= 2 and msg.startswith(b"\r\n", start):
            head_end, body_start = start, start + 2
        else:
            blank = msg.find(b"\r\n\r\n", start, end)
            head_end, body_start = (blank + 2, blank + 4) if blank >= 0 else (end, end)
        index = len(self.segments)
        self.segments.append(_Segment(_HEAD, start, head_end))
        if body_start > head_end:
            self.segments.append(_Segment(_RAW, head_end, body_start))
        content_type = _CT_FIELD.search(msg, start, head_end)
        encoding = _CTE_FIELD.search(msg, start, head_end)
        self.entity(
            index,
            content_type.group(1) if content_type else None,
            encoding.group(1) if encoding else None,
            body_start,
            end,
            depth,
            default,
        )

    def _multipart(
        self, boundary: bytes, start: int, end: int, depth: int, digest: bool
    ) -> bool:
        """Walk a multipart body; False if no delimiter line was found."""
        delimiter = b"--" + boundary
        found = self._delimiter(delimiter, start, start, end)
        if found is None:
            return False
        line, after, close = found
        if line > start:
            self.segments.append(_Segment(_FILL, start, line - 2))
            self.segments.append(_Segment(_RAW, line - 2, after))
        else:
            self.segments.append(_Segment(_RAW, line, after))
        default = b"message/rfc822" if digest else b"text/plain"  # RFC 2046 §5.1.5
        while not close:
            found = self._delimiter(delimiter, after, start, end)
            if found is None:
                self._child(after, end, depth + 1, default)
                return True
            line, following, close = found
            self._child(after, line - 2, depth + 1, default)
            self.segments.append(_Segment(_RAW, line - 2, following))
            after = following
        if after < end:
            self.segments.append(_Segment(_FILL, after, end))
        return True

    def _delimiter(
        self, delimiter: bytes, pos: int, start: int, end: int
    ) -> tuple[int, int, bool] | None:
        """Find the next delimiter line: (its start, next line's start, is close)."""
        msg = self.msg
        needle = b"\r\n" + delimiter
        first = pos == start
        for _ in range(_MAX_FALSE_DELIMITERS):
            if first and msg.startswith(delimiter, start, end):
                line = start
            else:
                found = msg.find(needle, pos, end)
                if found < 0:
                    return None
                line = found + 2
            first = False
            tail = line + len(delimiter)
            close = msg.startswith(b"--", tail, end)
            if close:
                tail += 2
            match = _WSP_RUN_B.match(msg, tail, end)
            tail = match.end() if match else tail
            if tail == end:
                return line, end, close
            if msg.startswith(b"\r\n", tail, end):
                return line, tail + 2, close
            pos = line
        raise _bad("Multipart body has too many lines resembling its boundary.")


# --------------------------------------------------------------------- finalize


def _format_date(when: datetime) -> str:
    """Return an RFC 5322 §3.3 date-time (naive datetimes are taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset()
    minutes = int(offset.total_seconds()) // 60 if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} "
        f"{when.year:04d} {when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def _message_id(value: str) -> bytes:
    """Return a validated ``<id@host>`` Message-ID."""
    value = value.strip()
    if not value.startswith("<"):
        value = f"<{value}>"
    if len(value) > _MAX_UNFOLDABLE or not _MSGID.fullmatch(value):
        raise _bad("Illegal Message-ID value.")
    return value.encode("ascii")


def _refold(field: bytes) -> bytes:
    """Refold a header field at whitespace so no line exceeds 998 octets."""
    colon = field.index(b":") + 1
    name = field[:colon]
    shown = name[:-1][:40].decode("latin-1")
    if colon > MAX_LINE:
        raise _bad(f"Header name {shown!r} is longer than 998 octets.")
    value = field[colon:].replace(b"\r\n", b"")
    pieces = _WS_CHUNK_B.findall(value)
    if not pieces:
        return name + b"\r\n"  # only whitespace, which readers discard anyway
    tail = len(value) - len(value.rstrip(b" \t"))
    if tail:
        pieces[-1] += value[-tail:]
    out = [name]
    width = len(name)
    for piece in pieces:
        if width > len(name) and width + len(piece) > _FOLD:
            out.append(b"\r\n")
            width = 0
        out.append(piece)
        width += len(piece)
        if width > MAX_LINE:
            raise _bad(
                f"Header {shown!r} has a line over 998 octets that cannot be folded."
            )
    out.append(b"\r\n")
    return b"".join(out)


def _rebuild_head(head: bytes, encoding: bytes | None) -> bytes:
    """Refold a part's long header lines and set its transfer encoding if given."""
    if head and not head.endswith(b"\r\n"):
        head += b"\r\n"
    out = []
    for name, field in _fields(head):
        if encoding is not None and name == b"content-transfer-encoding":
            continue
        out.append(_refold(field) if _long_lines(field) else field)
    if encoding is not None:
        out.append(b"Content-Transfer-Encoding: " + encoding + b"\r\n")
    return b"".join(out)


def _reencode(data: bytes, maintype: bytes, encoding: bytes) -> tuple[bytes, bytes]:
    """Re-encode a leaf body with long lines; return it and its new encoding."""
    if encoding in _IDENTITY:
        decoded = data
    elif encoding == b"quoted-printable":
        decoded = binascii.a2b_qp(data)
    elif encoding == b"base64":
        try:
            decoded = binascii.a2b_base64(data)
        except binascii.Error:
            raise _bad(
                "A base64 part with lines over 998 octets is not valid base64."
            ) from None
    else:
        shown = encoding.decode("latin-1")[:40]
        raise _bad(f"A part encoded as {shown!r} has a line longer than 998 octets.")
    if maintype == b"text" and encoding != b"base64":
        # Text is canonically CRLF (RFC 2046 §4.1.1), which _qp expects.
        return _qp(_LINE_BREAK.sub(b"\r\n", decoded)), b"quoted-printable"
    return _b64(decoded), b"base64"


def _rewrite_body(
    msg: bytes, body_start: int, content_type: bytes | None, encoding: bytes | None
) -> tuple[bytes, bytes | None]:
    """Re-encode parts with long lines; return the body and any new top-level CTE."""
    walker = _Walker(msg)
    walker.entity(-1, content_type, encoding, body_start, len(msg), 0, b"text/plain")
    segments = walker.segments
    replaced: dict[int, bytes] = {}
    new_encoding: dict[int, bytes] = {}
    for i, segment in enumerate(segments):
        chunk = msg[segment.start : segment.end]
        if segment.kind == _BODY and _long_lines(chunk):
            if segment.maintype in (b"multipart", b"message"):
                raise _bad("A multipart or message part has a line over 998 octets.")
            replaced[i], new_encoding[segment.head] = _reencode(
                chunk, segment.maintype, segment.encoding
            )
    out: list[bytes] = []
    for i, segment in enumerate(segments):
        chunk = msg[segment.start : segment.end]
        if i in replaced:
            out.append(replaced[i])
        elif segment.kind == _HEAD and (i in new_encoding or _long_lines(chunk)):
            out.append(_rebuild_head(chunk, new_encoding.get(i)))
        elif segment.kind == _FILL and _long_lines(chunk):
            continue  # preamble and epilogue are never shown; drop them
        else:
            out.append(chunk)
    body = b"".join(out)
    if _long_lines(body):
        raise _bad(
            "Message has a line longer than 998 octets that cannot be re-encoded."
        )
    return body, new_encoding.get(-1)


def finalize(
    raw: bytes,
    *,
    message_id_header: str | None,
    date: datetime | None,
    remove_bcc: bool = True,
) -> bytes:
    """Return the bytes to store, sign and send: normalised, stripped and stamped."""
    msg, _ = _normalise(raw)
    head_end, body_start = _split_head(msg)
    _check_head(msg, head_end)
    fields: list[tuple[bytes, bytes]] = []
    if date is not None:
        fields.append(
            (b"date", b"Date: " + _format_date(date).encode("ascii") + b"\r\n")
        )
    if message_id_header is not None:
        fields.append(
            (b"message-id", b"Message-ID: " + _message_id(message_id_header) + b"\r\n")
        )
    has_mime_version = has_content = False
    content_type = encoding = None
    for name, field in _fields(msg[:head_end]):
        if (
            name.startswith(b"x-ses-")
            # RFC 5321 §4.4: the delivering MTA adds Return-Path; never send one.
            or name == b"return-path"
            or (remove_bcc and name == b"bcc")
            or (date is not None and name == b"date")
            or (message_id_header is not None and name == b"message-id")
        ):
            continue
        if name == b"mime-version":
            has_mime_version = True
        elif name.startswith(b"content-"):
            has_content = True
            if name == b"content-type" and content_type is None:
                content_type = field[field.index(b":") + 1 :]
            elif name == b"content-transfer-encoding" and encoding is None:
                encoding = field[field.index(b":") + 1 :]
        if _long_lines(field):
            field = _refold(field)
        fields.append((name, field))
    body = msg[body_start:]
    if _long_lines(body):
        body, top_encoding = _rewrite_body(msg, body_start, content_type, encoding)
        if top_encoding is not None:
            fields = [f for f in fields if f[0] != b"content-transfer-encoding"]
            fields.append(
                (
                    b"content-transfer-encoding",
                    b"Content-Transfer-Encoding: " + top_encoding + b"\r\n",
                )
            )
            has_content = True
    if has_content and not has_mime_version:
        fields.append((b"mime-version", b"MIME-Version: 1.0\r\n"))
    return b"".join(field for _, field in fields) + b"\r\n" + body

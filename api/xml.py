"""XML answers of the SES v1 Query protocol (namespace 2010-12-01)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from xml.sax.saxutils import escape as _escape

NAMESPACE = "http://ses.amazonaws.com/doc/2010-12-01/"

# Characters XML 1.0 cannot carry at all (section 2.2), even as references.
# Error messages quote client input, so they must not reach the document raw:
# one NUL there makes the whole answer unparseable for an SDK.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """Escape text for an element, replacing characters XML cannot carry."""
    return _escape(_NOT_XML.sub("\ufffd", text))


def response(action: str, request_id: str, result: str | None) -> bytes:
    """Wrap a result body; ``None`` for actions without an output shape."""
    body = "" if result is None else f"<{action}Result>{result}</{action}Result>"
    return (
        f'<{action}Response xmlns="{NAMESPACE}">{body}'
        f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    ).encode()


def error(fault: str, code: str, message: str, request_id: str) -> bytes:
    return (
        f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>{fault}</Type>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def element(name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, datetime):
        text = timestamp(value)
    else:
        text = escape(str(value))
    return f"<{name}>{text}</{name}>"


def members(name: str, items: Iterable[str]) -> str:
    inner = "".join(f"<member>{item}</member>" for item in items)
    return f"<{name}>{inner}</{name}>"


def text_members(name: str, items: Iterable[str]) -> str:
    return members(name, (escape(item) for item in items))


def entries(name: str, items: Iterable[tuple[str, str]]) -> str:
    """A map: ``<entry><key>k</key><value>...</value></entry>``."""
    inner = "".join(
        f"<entry><key>{escape(key)}</key><value>{value}</value></entry>"
        for key, value in items
    )
    return f"<{name}>{inner}</{name}>"


def timestamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"

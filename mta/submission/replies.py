"""Every reply the submission server sends (RFC 5321 4.2), with RFC 3463 codes.

Per RFC 2034 3 the greeting and EHLO/HELO replies, like 3xx ones, carry none.
"""

from __future__ import annotations

import re
from typing import Final

# -- session ---------------------------------------------------------------------

GREETING_IDENT: Final = "ESMTP Sesame"  # after "220 <hostname>"
CLOSING: Final = "221 2.0.0 Bye"
OK: Final = "250 2.0.0 Ok"
HELP: Final = "214 2.0.0 Sesame SMTP submission (RFC 6409); see the SES SMTP docs"
NOT_IMPLEMENTED: Final = "502 5.5.1 Command not implemented"
COMMAND_UNRECOGNIZED: Final = "500 5.5.1 Command not recognized"
TOO_MANY_UNRECOGNIZED: Final = "502 5.5.1 Too many unrecognized commands, goodbye."
TOO_MANY_COMMANDS: Final = "421 4.7.0 Too many commands, closing connection"
COMMAND_TOO_LONG: Final = "500 5.5.2 Command line too long"
BAD_SYNTAX: Final = "500 5.5.2 Syntax error"
NON_ASCII: Final = "500 5.5.2 Non-ASCII characters are not allowed"
SEND_EHLO_FIRST: Final = "503 5.5.1 Send EHLO first"
HELO_SYNTAX: Final = "501 5.5.4 Syntax: HELO hostname"
EHLO_SYNTAX: Final = "501 5.5.4 Syntax: EHLO hostname"
QUIT_SYNTAX: Final = "501 5.5.4 Syntax: QUIT"
RSET_SYNTAX: Final = "501 5.5.4 Syntax: RSET"
IDLE_TIMEOUT: Final = "421 4.4.2 Timeout waiting for data from client"
SESSION_TIMEOUT: Final = "421 4.4.2 Session time limit exceeded, closing connection"
TOO_MANY_CONNECTIONS: Final = "421 4.4.5 Too many concurrent SMTP connections"
SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, try again later"
TEMPORARY_FAILURE: Final = "451 4.3.0 Temporary service failure"

# -- TLS (RFC 3207) --------------------------------------------------------------

READY_TO_START_TLS: Final = "220 2.0.0 Ready to start TLS"
STARTTLS_SYNTAX: Final = "501 5.5.4 Syntax: STARTTLS"
TLS_NOT_AVAILABLE: Final = "454 4.7.0 TLS not available"
TLS_ALREADY_ACTIVE: Final = "503 5.5.1 TLS already active"
STARTTLS_REQUIRED: Final = "530 5.7.0 Must issue a STARTTLS command first"
LACK_OF_SECURITY: Final = "554 5.7.0 Command refused due to lack of security"

# -- AUTH (RFC 4954) -------------------------------------------------------------

AUTH_SUCCESSFUL: Final = "235 2.7.0 Authentication successful"
AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
AUTH_INVALID: Final = "535 5.7.8 Authentication credentials invalid"
AUTH_THROTTLED: Final = "454 4.7.0 Too many authentication failures, try later"
AUTH_TEMPORARY_FAILURE: Final = "454 4.7.0 Temporary authentication failure"
AUTH_ENCRYPTION_REQUIRED: Final = (
    "538 5.7.11 Encryption required for requested authentication mechanism"
)
AUTH_ALREADY: Final = "503 5.5.1 Already authenticated"
AUTH_SYNTAX: Final = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_MECHANISM_UNKNOWN: Final = "504 5.5.4 Unrecognized authentication type"
AUTH_ABORTED: Final = "501 5.7.0 Authentication aborted"
AUTH_BAD_BASE64: Final = "501 5.5.2 Can't decode base64"
AUTH_BAD_PLAIN: Final = "501 5.5.2 Can't split auth value"

# -- envelope --------------------------------------------------------------------

SENDER_OK: Final = "250 2.1.0 Ok"
RECIPIENT_OK: Final = "250 2.1.5 Ok"
MAIL_SYNTAX: Final = "501 5.5.4 Syntax: MAIL FROM:<address>"
RCPT_SYNTAX: Final = "501 5.5.4 Syntax: RCPT TO:<address>"
SENDER_INVALID: Final = "553 5.1.7 Invalid email address"
RECIPIENT_INVALID: Final = "553 5.1.3 Invalid email address"
NESTED_MAIL: Final = "503 5.5.1 Nested MAIL command"
NEED_MAIL: Final = "503 5.5.1 Need MAIL command"
NEED_RCPT: Final = "503 5.5.1 Need RCPT command"
BODY_INVALID: Final = "501 5.5.4 BODY must be 7BIT or 8BITMIME"
SMTPUTF8_UNSUPPORTED: Final = "555 5.5.4 SMTPUTF8 is not supported"
MAIL_PARAMETERS_UNKNOWN: Final = (
    "555 5.5.4 MAIL FROM parameters not recognized or not implemented"
)
RCPT_PARAMETERS_UNKNOWN: Final = (
    "555 5.5.4 RCPT TO parameters not recognized or not implemented"
)
SIZE_EXCEEDED: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
TOO_MANY_RECIPIENTS: Final = "452 4.5.3 Too many recipients"

# -- DATA and the accept path -----------------------------------------------------

START_DATA: Final = "354 End data with <CR><LF>.<CR><LF>"
DATA_SYNTAX: Final = "501 5.5.4 Syntax: DATA"
LINE_TOO_LONG: Final = "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
MESSAGE_TOO_LONG: Final = "552 5.3.4 Message is too long."
# SES's SMTP wording (SES Developer Guide, "SMTP response codes") plus the code.
ACCEPTED: Final = "250 2.0.0 Ok {message_id}"
MESSAGE_REJECTED: Final = "554 5.7.1 Message rejected: {message}"
TRANSACTION_FAILED: Final = "554 5.6.0 Transaction failed: {message}"
THROTTLED: Final = "454 4.7.0 Throttling failure: {message}"
ACCOUNT_PAUSED: Final = "554 5.7.0 Sending paused for this account: {message}"

# RFC 5321 4.5.3.1.5: a reply line is at most 512 octets including CRLF.
MAX_REPLY_LINE = 510
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def render(template: str, **values: str) -> str:
    """Fill a reply template with values stripped of control characters."""
    clean = {k: _UNSAFE.sub(" ", v) for k, v in values.items()}
    text = template.format(**clean)
    if len(text) > MAX_REPLY_LINE:
        text = text[: MAX_REPLY_LINE - 3] + "..."
    return text


# aiosmtpd's own replies (aiosmtpd/smtp.py, 1.4.6), translated to the ones above so
# clients always see an enhanced code and never an echo of their own input.
STOCK: Final[dict[str, str]] = {
    "250 OK": OK,
    "221 Bye": CLOSING,
    "500 Command line too long": COMMAND_TOO_LONG,
    "500 Error: bad syntax": BAD_SYNTAX,
    "500 Error: strict ASCII mode": NON_ASCII,
    "554 Command refused due to lack of security": LACK_OF_SECURITY,
    "530 Must issue a STARTTLS command first": STARTTLS_REQUIRED,
    "502 5.5.1 Too many unrecognized commands, goodbye.": TOO_MANY_UNRECOGNIZED,
    "530 5.7.0 Authentication required": AUTH_REQUIRED,
    "501 Syntax: HELO hostname": HELO_SYNTAX,
    "501 Syntax: EHLO hostname": EHLO_SYNTAX,
    "501 Syntax: QUIT": QUIT_SYNTAX,
    "501 Syntax: STARTTLS": STARTTLS_SYNTAX,
    "454 TLS not available": TLS_NOT_AVAILABLE,
    "220 Ready to start TLS": READY_TO_START_TLS,
    "500 Error: command 'AUTH' not recognized": SEND_EHLO_FIRST,
    "538 5.7.11 Encryption required for requested authentication mechanism": (
        AUTH_ENCRYPTION_REQUIRED
    ),
    "503 Already authenticated": AUTH_ALREADY,
    "501 Not enough value": AUTH_SYNTAX,
    "501 Too many values": AUTH_SYNTAX,
    "504 5.5.4 Unrecognized authentication type": AUTH_MECHANISM_UNKNOWN,
    "235 2.7.0 Authentication successful": AUTH_SUCCESSFUL,
    "535 5.7.8 Authentication credentials invalid": AUTH_INVALID,
    "501 5.7.0 Auth aborted": AUTH_ABORTED,
    "501 5.5.2 Can't decode base64": AUTH_BAD_BASE64,
    "501 5.5.2 Can't split auth value": AUTH_BAD_PLAIN,
    "501 Syntax: MAIL FROM: <address>": MAIL_SYNTAX,
    "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]": MAIL_SYNTAX,
    "501 Syntax: RCPT TO: <address>": RCPT_SYNTAX,
    "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]": RCPT_SYNTAX,
    "503 Error: nested MAIL command": NESTED_MAIL,
    "501 Error: BODY can only be one of 7BIT, 8BITMIME": BODY_INVALID,
    "501 Error: SMTPUTF8 takes no arguments": SMTPUTF8_UNSUPPORTED,
    "501 Error: SMTPUTF8 disabled": SMTPUTF8_UNSUPPORTED,
    "552 Error: message size exceeds fixed maximum message size": SIZE_EXCEEDED,
    "555 MAIL FROM parameters not recognized or not implemented": (
        MAIL_PARAMETERS_UNKNOWN
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        RCPT_PARAMETERS_UNKNOWN
    ),
    "503 Error: need MAIL command": NEED_MAIL,
    "503 Error: need RCPT command": NEED_RCPT,
    "501 Syntax: RSET": RSET_SYNTAX,
    "501 Syntax: DATA": DATA_SYNTAX,
    "354 End data with <CR><LF>.<CR><LF>": START_DATA,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    "552 Error: Too much mail data": MESSAGE_TOO_LONG,
    "502 EXPN not implemented": NOT_IMPLEMENTED,
}

# Stock replies that carry client input, matched by shape.
STOCK_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (
        re.compile(r'500 Error: command ".*" not recognized\Z', re.S),
        COMMAND_UNRECOGNIZED,
    ),
    (re.compile(r"421 4\.7\.0 \S+ sent too many times\Z"), TOO_MANY_COMMANDS),
    (re.compile(r"553 5\.1\.3 Error: malformed address\Z"), RECIPIENT_INVALID),
    (re.compile(r"503 Error: send \S+ first\Z"), SEND_EHLO_FIRST),
    # aiosmtpd's answers to an exception would show its text; never send that.
    (re.compile(r"500 Error: (\(|Cannot describe error)"), TEMPORARY_FAILURE),
)

_ENHANCED = re.compile(r"[245]\d\d [245]\.\d{1,3}\.\d{1,3}( |\Z)")
_FALLBACK = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}


def translate(reply: str) -> tuple[str, bool]:
    """Return the reply to send for one aiosmtpd or Sesame reply, and if it was known."""
    stock = STOCK.get(reply)
    if stock is not None:
        return stock, True
    for pattern, replacement in STOCK_PATTERNS:
        if pattern.match(reply):
            return replacement, True
    if _ENHANCED.match(reply) or reply[:1] == "3":
        return reply, True
    # Unknown (a newer aiosmtpd?): keep the class digit, add the generic code.
    code, _, text = reply.partition(" ")
    enhanced = _FALLBACK.get(code[:1], "5.0.0")
    return f"{code} {enhanced} {text}", False

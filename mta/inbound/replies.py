"""Every reply the inbound MX sends (RFC 5321 4.2), with RFC 3463 enhanced codes.

aiosmtpd's own replies are translated by the submission server's table, so both
listeners answer the same protocol errors the same way.
"""

from __future__ import annotations

from typing import Final

from mta.submission import replies as _submission

# -- session ---------------------------------------------------------------------

GREETING_IDENT: Final = "ESMTP Sesame MX"  # after "220 <hostname>"
HELP: Final = (
    "214 2.0.0 Sesame inbound MX: delivery reports (RFC 3464) and"
    " feedback reports (RFC 5965) only"
)
OK: Final = "250 2.0.0 Ok"
CLOSING: Final = "221 2.0.0 Bye"
NOT_IMPLEMENTED: Final = "502 5.5.1 Command not implemented"
# RFC 4954 4: AUTH is not advertised here, so it is an unknown command.
AUTH_NOT_SUPPORTED: Final = "502 5.5.1 AUTH not supported on this server"
IDLE_TIMEOUT: Final = "421 4.4.2 Timeout waiting for data from client"
SESSION_TIMEOUT: Final = "421 4.4.2 Session time limit exceeded, closing connection"
TOO_MANY_CONNECTIONS: Final = "421 4.4.5 Too many concurrent SMTP connections"
# Postfix's wording for its anvil limits; RFC 3463 X.7.0 "other security status".
CONNECTION_RATE: Final = (
    "421 4.7.0 Too many connections from your address, try again later"
)
MESSAGE_RATE: Final = "450 4.7.0 Too many messages from your address, try again later"
SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, try again later"
TEMPORARY_FAILURE: Final = "451 4.3.0 Temporary service failure, try again later"

# -- envelope --------------------------------------------------------------------

SENDER_OK: Final = "250 2.1.0 Ok"
RECIPIENT_OK: Final = "250 2.1.5 Ok"
RELAY_DENIED: Final = "550 5.7.1 Relaying denied"
SENDER_INVALID: Final = "553 5.1.7 Invalid email address"
RECIPIENT_INVALID: Final = "553 5.1.3 Invalid email address"
TOO_MANY_RECIPIENTS: Final = "452 4.5.3 Too many recipients"
SIZE_EXCEEDED: Final = "552 5.3.4 Message size exceeds fixed maximum message size"
MESSAGE_TOO_LONG: Final = "552 5.3.4 Message is too long."

# -- DATA ------------------------------------------------------------------------

# One reply whether a report was recorded, a duplicate or dropped (forged,
# unknown, unparseable): a token's validity must not be observable, and a
# report is never answered with a DSN of ours (RFC 3464 2, RFC 5321 6.1).
ACCEPTED: Final = "250 2.0.0 Ok: report received"


def translate(reply: str) -> tuple[str, bool]:
    """Return the reply to send for one aiosmtpd or Sesame reply, and if it was known."""
    return _submission.translate(reply)

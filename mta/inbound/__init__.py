"""The inbound MX: receives RFC 3464 DSNs and RFC 5965 ARF reports over SMTP (RFC 5321).

Mail is accepted only for the return-path domain; it is never relayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sesame.settings import Settings

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one MX client may do; the defaults follow Postfix's smtpd."""

    # Reports are small; the DSN/ARF parsers cap their input at the same 10 MiB.
    max_message_bytes: int = 10 * 1024 * 1024
    # A report goes to one return path; a few more allow for FBL role addresses.
    max_recipients: int = 10
    # RFC 5321 4.5.3.2.7: a server should wait at least 5 minutes for a command.
    idle_seconds: float = 300.0
    # A deadline no activity resets, so a trickling client cannot stay forever.
    session_seconds: float = 900.0
    # Each command at most this often per session (aiosmtpd command_call_limit);
    # MAIL therefore bounds the messages per session.
    commands_per_session: int = 200
    greetings_per_session: int = 10
    # Concurrent sessions on the listener and from one client address (Postfix
    # smtpd_client_connection_count_limit is 50; reports come from few hosts).
    max_connections: int = 500
    max_connections_per_ip: int = 20
    # Fixed windows counted in Redis per client address (IPv6: per /64), then
    # 421 at connect or 450 at MAIL; Postfix's anvil uses a 60-second window too.
    rate_window_seconds: int = 60
    connections_per_window: int = 120
    messages_per_window: int = 300

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> Limits:
        """Return the limits for these settings, with some replaced."""
        # Settings has no MX limits yet, so every deployment gets the defaults.
        return cls(**overrides)

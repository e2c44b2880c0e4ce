"""Every setting Sesame reads, with its default, unit and meaning.

Settings come from the environment (prefix ``SESAME_``); they are built once per
process by :func:`get_settings` and passed to the parts that need them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SESAME_", extra="ignore")

    # Storage
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL; unset means embedded PostgreSQL in data_dir (URL)",
    )
    redis_url: str | None = Field(
        None, description="Redis URL; unset means embedded Redis in data_dir (URL)"
    )
    data_dir: Path = Field(
        Path("./var"),
        description="directory for embedded databases, TLS certificate and keys (path)",
    )
    database_pool_size: int = Field(
        8, description="PostgreSQL connections per process (connections)"
    )
    secret_key: str | None = Field(
        None,
        description="base64 32-byte key that encrypts stored secrets; "
        "unset means a key generated once in data_dir/secret.key (base64)",
    )

    # Listeners
    api_host: str = Field("127.0.0.1", description="HTTP API bind address (host)")
    api_port: int = Field(8080, description="HTTP API port (TCP port)")
    api_workers: int = Field(
        2, description="uvicorn worker processes started by sesame api (processes)"
    )
    smtp_host: str = Field(
        "127.0.0.1", description="SMTP submission bind address (host)"
    )
    smtp_port: int = Field(2587, description="SMTP submission with STARTTLS (TCP port)")
    smtps_port: int = Field(
        2465, description="SMTP submission over implicit TLS (TCP port)"
    )
    mx_host: str = Field("127.0.0.1", description="inbound MX bind address (host)")
    mx_port: int = Field(2525, description="inbound MX for DSNs and ARF (TCP port)")
    hostname: str = Field(
        "localhost", description="EHLO and banner name, Message-ID domain (hostname)"
    )
    mail_from_domain: str | None = Field(
        None, description="return-path (VERP) domain; unset means hostname (domain)"
    )
    public_url: str = Field(
        "http://127.0.0.1:8080", description="base of verification links (URL)"
    )
    region: str = Field("us-east-1", description="region reported in errors (name)")
    tls_cert: Path | None = Field(
        None, description="PEM certificate for TLS; unset means self-signed (path)"
    )
    tls_key: Path | None = Field(None, description="PEM key for tls_cert (path)")

    # Delivery
    dns_nameservers: str | None = Field(
        None,
        description="comma-separated host[:port] resolvers; unset means system (list)",
    )
    dns_timeout_seconds: float = Field(
        5.0, description="lifetime of one DNS lookup (seconds)"
    )
    delivery_port: int = Field(
        25, description="TCP port used to connect to destination MX hosts (TCP port)"
    )
    smarthost: str | None = Field(
        None,
        description="relay all outbound mail through this host instead of MX (host:port)",
    )
    workers: int = Field(
        2, description="delivery worker processes started by sesame up (processes)"
    )
    delivery_concurrency: int = Field(
        64, description="concurrent SMTP transactions per worker process (sessions)"
    )
    smtp_connect_timeout_seconds: float = Field(
        30.0, description="outbound connect and greeting timeout (seconds)"
    )
    smtp_command_timeout_seconds: float = Field(
        300.0, description="outbound per-command timeout, RFC 5321 4.5.3.2 (seconds)"
    )
    site_limits: str | None = Field(
        None,
        description="JSON per destination suffix overriding shaping, e.g."
        ' {"example.com": {"max_connections": 5, "max_message_rate": 2}}'
        " (connections, messages per connection, messages/s, idle seconds)",
    )
    dispatch_batch_size: int = Field(
        300, description="recipients per delivery job (recipients)"
    )
    lease_seconds: int = Field(
        600, description="how long a claimed recipient stays claimed (seconds)"
    )
    retry_base_seconds: float = Field(
        60.0, description="delay before the first retry; doubles after (seconds)"
    )
    retry_max_interval_seconds: float = Field(
        3600.0, description="longest delay between two attempts (seconds)"
    )
    max_delivery_seconds: float = Field(
        50400.0, description="give-up age of a recipient, then it bounces (seconds)"
    )
    sweep_seconds: float = Field(
        5.0,
        description="how often the scheduler looks for due or abandoned work (seconds)",
    )
    reputation_evaluate_seconds: float = Field(
        300.0,
        description="how often reputation and quota growth are evaluated (seconds)",
    )
    identity_recheck_seconds: float = Field(
        300.0, description="how often pending domains are looked up in DNS (seconds)"
    )

    # Limits and quotas
    max_message_bytes: int = Field(
        10 * 1024 * 1024, description="largest SES v1 message after encoding (bytes)"
    )
    max_recipients: int = Field(50, description="recipients per message (recipients)")
    sandbox_max_24_hour_send: float = Field(
        200, description="sandbox quota per rolling 24 hours (recipients)"
    )
    sandbox_max_send_rate: float = Field(
        1, description="sandbox send rate (recipients per second)"
    )
    production_max_24_hour_send: float = Field(
        1000, description="initial production quota per rolling 24 hours (recipients)"
    )
    production_max_send_rate: float = Field(
        1, description="initial production send rate (recipients per second)"
    )
    verification_ttl_seconds: int = Field(
        86400, description="lifetime of an address verification link (seconds)"
    )
    account_cache_seconds: float = Field(
        1.0, description="how long a process trusts its copy of an account (seconds)"
    )

    # Metrics (sesame/metrics.py)
    metrics_host: str = Field(
        "127.0.0.1",
        description="bind address of a lone component's metrics endpoint (host)",
    )
    metrics_port: int = Field(
        0,
        description="metrics endpoint of sesame smtp|mx|worker|scheduler run alone;"
        " 0 means none; under sesame up the API's /metrics covers all (TCP port)",
    )
    metrics_account_seconds: float = Field(
        60.0,
        description="how often the scheduler samples per-account quota, status and"
        " reputation gauges (seconds)",
    )

    smtp_max_message_bytes: int = Field(
        41943040, description="SIZE advertised and enforced on SMTP submission (bytes)"
    )
    smtp_idle_timeout_seconds: float = Field(
        300.0,
        description="SMTP session closed after this long without a byte (seconds)",
    )
    smtp_session_timeout_seconds: float = Field(
        1800.0,
        description="SMTP session deadline that activity does not reset (seconds)",
    )
    smtp_commands_per_session: int = Field(
        1000, description="times each SMTP command may be used in a session (commands)"
    )
    smtp_auth_failures: int = Field(
        5, description="AUTH failures per client address or username, then 454 (count)"
    )
    smtp_auth_failure_window_seconds: int = Field(
        600, description="how long AUTH failures are remembered (seconds)"
    )
    smtp_max_connections: int = Field(
        1000,
        description="concurrent sessions per SMTP listener, then 421 (connections)",
    )

    log_level: str = Field("INFO", description="log level (name)")

    @property
    def return_path_domain(self) -> str:
        return self.mail_from_domain or self.hostname

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The configured resolvers as (host, port) pairs."""
        if not self.dns_nameservers:
            return []
        servers = []
        for item in self.dns_nameservers.split(","):
            item = item.strip()
            if not item:
                continue
            host, _, port = (
                item.rpartition(":") if item.count(":") == 1 else (item, "", "")
            )
            servers.append((host or item, int(port) if port else 53))
        return servers


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

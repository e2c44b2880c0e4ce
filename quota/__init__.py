"""Per-account SES sending quotas (send rate and rolling 24 hours) in Redis."""

from quota.gate import (
    Admission,
    Decision,
    QuotaGate,
    QuotaKeys,
    QuotaUnavailable,
    Rebuild,
    quota_keys,
)

__all__ = [
    "Admission",
    "Decision",
    "QuotaGate",
    "QuotaKeys",
    "QuotaUnavailable",
    "Rebuild",
    "quota_keys",
]

"""API errors with SES's codes, HTTP statuses and wording.

ApiError
├── raised by handlers with an SES code ("MessageRejected", "Throttling", ...)
└── built from SigV4Error, AcceptError, MessageError, IdentityError at the edge
"""

from __future__ import annotations

# HTTP status by SES v1 error code; anything not listed is a 400 (every
# modelled SES v1 error is).
_STATUS = {
    "MissingAuthenticationToken": 403,
    "InvalidClientTokenId": 403,
    "SignatureDoesNotMatch": 403,
    "OptInRequired": 403,
    "MalformedQueryString": 404,
    "InternalFailure": 500,
    "ServiceUnavailable": 503,
}


class ApiError(Exception):
    """An error answered to the client in SES's envelope."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or _STATUS.get(code, 400)

    @property
    def fault(self) -> str:
        """Who is at fault, in the Query protocol's terms."""
        return "Receiver" if self.status >= 500 else "Sender"


def missing(name: str) -> ApiError:
    return ApiError(
        "MissingParameter", f"The request must contain the parameter {name}."
    )


def invalid(message: str) -> ApiError:
    return ApiError("InvalidParameterValue", message)

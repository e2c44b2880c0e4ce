"""The fast MAIL/RCPT path parser agrees with aiosmtpd's (RFC 5321 4.1.2)."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mta.submission.server import _PLAIN_PATH, SubmissionProtocol

_ALPHABET = st.sampled_from(
    list("abcXYZ019.-_+=!#$%&'*/?^`{|}~@<>()\" \t[]:;,\\") + ["é"]
)


def _slow(arg: str) -> tuple[str | None, str | None]:
    server = SMTP.__new__(SMTP)
    server.local_part_limit = 0
    return SMTP._getaddr(server, arg)


def _fast(arg: str) -> tuple[str | None, str | None]:
    server = SubmissionProtocol.__new__(SubmissionProtocol)
    server.local_part_limit = 0
    return SubmissionProtocol._getaddr(server, arg)


@settings(max_examples=1000, deadline=None)
@given(st.text(_ALPHABET, max_size=40))
@example("<a@example.com>")
@example("<a.b+tag@sub.example.com> SIZE=1000 BODY=8BITMIME")
@example("<a..b@example.com>")
@example("<a@example..com>")
@example("<a@-example.com>")
@example("<a@example.com>\tSIZE=1")
@example("<a@example.com> (comment)")
@example('<"quoted local"@example.com>')
@example("<a@[127.0.0.1]>")
def test_fast_path_matches_aiosmtpd(arg: str) -> None:
    # Paths the pattern does not take go to aiosmtpd's own parser unchanged.
    if _PLAIN_PATH.match(arg):
        assert _fast(arg) == _slow(arg)


@settings(max_examples=1000, deadline=None)
@given(
    st.from_regex(r"\A[a-z0-9.+_-]{1,12}@[a-z0-9.-]{1,12}\Z"),
    st.sampled_from(["", " SIZE=10", " BODY=8BITMIME SIZE=99", "\tSIZE=1", " (x)"]),
)
def test_fast_path_on_address_like_paths(address: str, params: str) -> None:
    arg = f"<{address}>{params}"
    if _PLAIN_PATH.match(arg):
        assert _fast(arg) == _slow(arg)


def test_common_paths_take_the_fast_path() -> None:
    for arg in ("<a@example.com>", "<bounce+x.y@mail.example.org> SIZE=42"):
        assert _PLAIN_PATH.match(arg)

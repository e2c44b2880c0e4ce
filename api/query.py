"""Parameters of the AWS Query protocol: flat form fields, lists as ``.member.N``."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from api.errors import ApiError, invalid, missing

_MEMBER = re.compile(r"^(.*)\.member\.(\d+)(.*)$")

# A SendEmail body is a few KB; the limit guards the parser, not the message
# size, which is checked on the decoded message.
MAX_FIELDS = 2000


class Params:
    """The fields of one Query request, with typed accessors."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    @classmethod
    def parse(cls, body: bytes, query: bytes = b"") -> Params:
        fields: dict[str, str] = {}
        for source in (query, body):
            if not source:
                continue
            try:
                pairs = parse_qsl(
                    source.decode("utf-8"),
                    keep_blank_values=True,
                    strict_parsing=False,
                    max_num_fields=MAX_FIELDS,
                )
            except (UnicodeDecodeError, ValueError):
                raise ApiError(
                    "MalformedQueryString", "The query string is malformed.", 400
                ) from None
            for key, value in pairs:
                fields[key] = value
        return cls(fields)

    def get(self, name: str) -> str | None:
        return self.fields.get(name)

    def require(self, name: str) -> str:
        value = self.fields.get(name)
        if value is None:
            raise missing(name)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.fields.get(name)
        if value is None:
            return default
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise invalid(f"Invalid boolean value for {name}: {value}.")

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.fields.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise invalid(f"Invalid integer value for {name}: {value}.") from None

    def members(self, prefix: str) -> list[str]:
        """The list ``prefix.member.1``, ``prefix.member.2``, ... in index order."""
        start = prefix + ".member."
        found = []
        for key, value in self.fields.items():
            if key.startswith(start):
                index = key[len(start) :]
                if index.isdigit():
                    found.append((int(index), value))
        return [value for _, value in sorted(found)]

    def structs(self, prefix: str) -> list[dict[str, str]]:
        """A list of structures: ``prefix.member.N.Field`` → one dict per N."""
        start = prefix + ".member."
        grouped: dict[int, dict[str, str]] = {}
        for key, value in self.fields.items():
            if key.startswith(start):
                index, _, rest = key[len(start) :].partition(".")
                if index.isdigit() and rest:
                    grouped.setdefault(int(index), {})[rest] = value
        return [grouped[i] for i in sorted(grouped)]

"""Email templates: SES's Handlebars subset, rendered safely, and their storage.

Limitations: no helpers beyond if/unless/each/with, no partials other than
inline ones, no literals, hash arguments, sub-expressions or block parameters.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection

from mta import message

# SES: a stored template is at most 500 KB, subject, text and HTML together.
MAX_TEMPLATE_BYTES = 500 * 1024
# SES's TemplateData shape: a string of at most 262,144 characters.
MAX_DATA_CHARS = 262_144
# SES allows 20,000 stored templates per account and region.
MAX_TEMPLATES = 20_000
# A template name as SES takes it: letters, digits, '_' and '-', 64 at most.
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# The bounds below keep a hostile template or data set from taking unbounded
# time, memory or stack: none of them is near what a real email needs.
MAX_NESTING = 64  # open blocks at one point of a template
MAX_RENDER_DEPTH = 64  # blocks and partials entered while rendering
MAX_DATA_DEPTH = 64  # nested arrays and objects in the rendering data
MAX_OUTPUT_CHARS = 10 * 1024 * 1024  # all parts of one rendering together
MAX_STEPS = 100_000  # nodes visited and loop turns: about 0.1 s of CPU

UNSUPPORTED = "Template contains unsupported operations."


class TemplateError(Exception):
    """A template that cannot be stored or rendered, with the SES error code.

    Codes: ``InvalidTemplate`` (syntax, unsupported operations),
    ``MissingRenderingAttribute``, ``InvalidRenderingParameter`` (bad data),
    ``InvalidParameterValue`` (bad name or size) and ``LimitExceeded``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Rendered:
    """The parts of a template after rendering; None where the template has none."""

    subject: str | None
    text: str | None
    html: str | None


# -- the template language ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Path:
    """A reference such as ``a.b``, ``this``, ``../x``, ``@index`` or ``@root.a``."""

    text: str  # as written, for error messages
    segments: tuple[str, ...]
    up: int = 0  # how many ``../``
    data: str | None = None  # the name after ``@``; "root" starts at the root


@dataclass(slots=True)
class _Var:
    path: _Path
    escape: bool


@dataclass(slots=True)
class _Block:
    helper: str  # if, unless, each, with
    path: _Path
    program: list[_Node] = field(default_factory=list)
    inverse: list[_Node] | None = None


@dataclass(slots=True)
class _Partial:
    name: str


_Node = str | _Var | _Block | _Partial

_BLOCK_HELPERS = frozenset({"if", "unless", "each", "with"})
# Handlebars' identifier: anything but whitespace and these characters.
_ID = re.compile(r"""[^\s!"#%&'()*+,./;<=>@\[\\\]^`{|}~]+""")
_PARTIAL_NAME = re.compile(r"""^(?:"([^"]+)"|'([^']+)'|([^\s"']+))$""")


@dataclass(slots=True)
class _Tag:
    """One ``{{...}}`` of the source, before it becomes a node."""

    kind: str  # var, raw, open, close, else, partial, inline, comment
    body: str  # what follows the sigil, stripped
    line: int
    strip_before: bool  # ``{{~``
    strip_after: bool  # ``~}}``


@dataclass(slots=True)
class _Program:
    nodes: list[_Node]
    partials: dict[str, list[_Node]]


@dataclass(slots=True)
class _Frame:
    """An open block while parsing: nodes go to ``target`` until it closes."""

    helper: str  # if, unless, each, with, or inline for an inline partial
    block: _Block | None  # None for an inline partial
    target: list[_Node]
    line: int
    chained: bool = False  # opened by "else if", closed with its first block
    name: str = ""  # of an inline partial


def _parse(source: str, part: str) -> _Program:
    """Parse one part of a template; raise TemplateError("InvalidTemplate")."""
    items = _tokenize(source, part)
    _control_whitespace(items)

    root: list[_Node] = []
    partials: dict[str, list[_Node]] = {}
    used: set[str] = set()
    stack: list[_Frame] = []
    for item in items:
        target = stack[-1].target if stack else root
        if isinstance(item, str):
            if item:
                target.append(item)
        elif item.kind in ("var", "raw"):
            path = _single_path(item.body, part, item.line)
            target.append(_Var(path, item.kind == "var"))
        elif item.kind == "partial":
            name = _partial_name(item.body, part, item.line)
            used.add(name)
            target.append(_Partial(name))
        elif item.kind == "inline":
            name = _inline_name(item.body, part, item.line)
            stack.append(_Frame("inline", None, [], item.line, name=name))
        elif item.kind == "open":
            block = _Block(*_block_head(item.body, part, item.line))
            target.append(block)
            stack.append(_Frame(block.helper, block, block.program, item.line))
        elif item.kind == "else":
            _else(stack, item, part)
        elif item.kind == "close":
            frame = _close(stack, item, part)
            if frame.block is None:
                partials[frame.name] = frame.target
        if len(stack) > MAX_NESTING:
            raise _syntax(
                part, stack[-1].line, f"blocks nest deeper than {MAX_NESTING}"
            )
    if stack:
        raise _syntax(
            part, stack[0].line, f"{{{{#{stack[0].helper}}}}} is never closed"
        )
    missing = sorted(used - partials.keys())
    if missing:
        raise TemplateError(
            "InvalidTemplate", f"The partial {missing[0]} could not be found."
        )
    return _Program(root, partials)


def _else(stack: list[_Frame], tag: _Tag, part: str) -> None:
    """Start the inverse of the open block; ``else if x`` chains a new block."""
    if not stack or stack[-1].block is None:
        raise _syntax(part, tag.line, "{{else}} outside a block")
    frame = stack[-1]
    block = frame.block
    assert block is not None
    if block.inverse is not None:
        raise _syntax(part, tag.line, "a second {{else}} in one block")
    block.inverse = frame.target = []
    if tag.body:
        inner = _Block(*_block_head(tag.body, part, tag.line))
        if inner.helper not in ("if", "unless"):
            raise TemplateError("InvalidTemplate", UNSUPPORTED)
        block.inverse.append(inner)
        stack.append(_Frame(inner.helper, inner, inner.program, tag.line, chained=True))


def _close(stack: list[_Frame], tag: _Tag, part: str) -> _Frame:
    """Close the open block (and the blocks chained to it); return its frame."""
    while stack and stack[-1].chained:
        stack.pop()
    if not stack:
        raise _syntax(part, tag.line, f"{{{{/{tag.body}}}}} closes no block")
    frame = stack.pop()
    if tag.body != frame.helper:
        raise _syntax(
            part,
            tag.line,
            f"{{{{/{tag.body}}}}} does not close {{{{#{frame.helper}}}}}"
            f" of line {frame.line}",
        )
    return frame


def _syntax(part: str, line: int, what: str) -> TemplateError:
    return TemplateError(
        "InvalidTemplate", f"{part} has a syntax error on line {line}: {what}."
    )


def _tokenize(source: str, part: str) -> list[str | _Tag]:
    """Split source into text and tags; ``\\{{`` stands for a literal ``{{``."""
    items: list[str | _Tag] = []
    text: list[str] = []
    pos, line, counted = 0, 1, 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            text.append(source[pos:])
            break
        escapes = len(source[max(pos, start - 2) : start]) - len(
            source[max(pos, start - 2) : start].rstrip("\\")
        )
        if escapes == 1:
            text.append(source[pos : start - 1] + "{{")
            pos = start + 2
            continue
        # "\\{{" is one backslash, then a tag.
        text.append(source[pos : start - 1] if escapes == 2 else source[pos:start])
        line += source.count("\n", counted, start)
        counted = start
        tag, pos = _read_tag(source, start, part, line)
        items.append("".join(text))
        text = []
        items.append(tag)
    items.append("".join(text))
    return items


def _read_tag(source: str, start: int, part: str, line: int) -> tuple[_Tag, int]:
    """Read the tag opening at ``start``; return it and the index after it."""
    i = start + 2
    strip_before = source.startswith("~", i)
    if strip_before:
        i += 1
    if source.startswith("!--", i):
        end = source.find("--", i + 3)
        while end >= 0 and not source.startswith(("--}}", "--~}}"), end):
            end = source.find("--", end + 1)
        if end < 0:
            raise _syntax(part, line, "a comment is never closed")
        strip_after = source.startswith("--~", end)
        return _Tag("comment", "", line, strip_before, strip_after), end + (
            5 if strip_after else 4
        )
    end = source.find("}}", i)
    if end < 0:
        raise _syntax(part, line, "{{ is never closed")
    if source.startswith("{", i):
        if end - 2 > i and source.startswith("}~", end - 2):
            body, close, strip_after = source[i + 1 : end - 2], end + 2, True
        elif source.startswith("}}}", end):
            body, close, strip_after = source[i + 1 : end], end + 3, False
        else:
            raise _syntax(part, line, "{{{ is never closed")
        return _Tag("raw", body.strip(), line, strip_before, strip_after), close
    body = source[i:end]
    strip_after = body.endswith("~")
    if strip_after:
        body = body[:-1]
    body = body.strip()
    close = end + 2
    if not body:
        raise _syntax(part, line, "an empty {{}}")
    sigil, rest = body[0], body[1:].strip()
    if sigil == "!":
        kind, body = "comment", ""
    elif sigil == "#":
        if rest.startswith("*"):
            kind, body = "inline", rest[1:].strip()
        elif rest.startswith(">"):
            raise TemplateError("InvalidTemplate", UNSUPPORTED)  # partial blocks
        else:
            kind, body = "open", rest
    elif sigil == "/":
        kind, body = "close", rest
    elif sigil == "^":
        if rest:
            raise TemplateError("InvalidTemplate", UNSUPPORTED)  # inverted sections
        kind, body = "else", ""
    elif sigil == ">":
        kind, body = "partial", rest
    elif sigil == "&":
        kind, body = "raw", rest
    elif body == "else" or body.startswith(("else ", "else\t", "else\n")):
        kind, body = "else", body[4:].strip()
    else:
        kind = "var"
    return _Tag(kind, body, line, strip_before, strip_after), close


def _control_whitespace(items: list[str | _Tag]) -> None:
    """Apply ``~`` and Handlebars' standalone-line rule to the text around tags.

    A block, else, comment or inline-partial tag alone on its line takes the
    line's indentation and line break with it, so blocks leave no blank lines.
    ``items`` alternates text and tags, starting and ending with text.
    """
    last = len(items) - 1
    standalone = [
        isinstance(item, _Tag)
        and item.kind in ("open", "close", "else", "comment", "inline")
        and _alone_before(_text(items, i - 1), at_start=i - 1 == 0)
        and _alone_after(_text(items, i + 1), at_end=i + 1 == last)
        for i, item in enumerate(items)
    ]
    for i, item in enumerate(items):
        if not isinstance(item, _Tag):
            continue
        if standalone[i]:
            before = _text(items, i - 1)
            items[i - 1] = before.rstrip(" \t")
            after = _text(items, i + 1)
            items[i + 1] = after[len(after) - len(after.lstrip(" \t")) :]
            items[i + 1] = _drop_line_break(_text(items, i + 1))
        if item.strip_before:
            items[i - 1] = _text(items, i - 1).rstrip()
        if item.strip_after:
            items[i + 1] = _text(items, i + 1).lstrip()


def _text(items: list[str | _Tag], i: int) -> str:
    item = items[i]
    assert isinstance(item, str)
    return item


def _alone_before(text: str, *, at_start: bool) -> bool:
    """Tell whether only blanks follow the last line break (or the start)."""
    blanks = text.rstrip(" \t")
    return blanks.endswith("\n") or (at_start and not blanks)


def _alone_after(text: str, *, at_end: bool) -> bool:
    """Tell whether only blanks come before the next line break (or the end)."""
    blanks = text.lstrip(" \t")
    return blanks.startswith(("\n", "\r\n")) or (at_end and not blanks)


def _drop_line_break(text: str) -> str:
    if text.startswith("\r\n"):
        return text[2:]
    return text[1:] if text.startswith("\n") else text


def _split_params(body: str, part: str, line: int) -> list[str]:
    """Split a tag's words on whitespace, keeping ``[...]`` and quotes whole."""
    words: list[str] = []
    i, n = 0, len(body)
    while i < n:
        if body[i].isspace():
            i += 1
            continue
        start = i
        while i < n and not body[i].isspace():
            closer = {"[": "]", '"': '"', "'": "'"}.get(body[i])
            if closer is not None:
                end = body.find(closer, i + 1)
                if end < 0:
                    raise _syntax(part, line, f"{body[i]} is never closed")
                i = end
            i += 1
        words.append(body[start:i])
    return words


def _single_path(body: str, part: str, line: int) -> _Path:
    """Parse the one path of ``{{path}}``; a helper call is unsupported."""
    words = _split_params(body, part, line)
    if len(words) != 1:
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    return _parse_path(words[0], part, line)


def _block_head(body: str, part: str, line: int) -> tuple[str, _Path]:
    """Parse ``helper path`` of a block; other helpers are unsupported."""
    words = _split_params(body, part, line)
    if not words:
        raise _syntax(part, line, "a block without a helper")
    helper = words[0]
    if helper not in _BLOCK_HELPERS:
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    if len(words) == 1:
        raise _syntax(part, line, f"#{helper} requires exactly one argument")
    if len(words) > 2:  # hash arguments, block parameters, a second value
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    return helper, _parse_path(words[1], part, line)


def _partial_name(body: str, part: str, line: int) -> str:
    words = _split_params(body, part, line)
    if len(words) != 1:  # a context or hash argument
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    found = _PARTIAL_NAME.match(words[0])
    if found is None or words[0].startswith("("):
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    return next(group for group in found.groups() if group is not None)


def _inline_name(body: str, part: str, line: int) -> str:
    words = _split_params(body, part, line)
    if len(words) != 2 or words[0] != "inline":
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    if words[1][:1] not in ('"', "'") or len(words[1]) < 3:
        raise _syntax(part, line, "an inline partial needs a quoted name")
    return words[1][1:-1]


def _parse_path(word: str, part: str, line: int) -> _Path:
    """Parse a path expression; literals and sub-expressions are unsupported."""
    if word[0] in "\"'(0123456789-" or word in ("true", "false", "null", "undefined"):
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    if "=" in word.split("]")[-1]:  # a hash argument such as includeZero=true
        raise TemplateError("InvalidTemplate", UNSUPPORTED)
    rest, up, data = word, 0, None
    if rest.startswith("@"):
        name = _ID.match(rest, 1)
        if name is None:
            raise _syntax(part, line, f"{word} is not a valid name")
        data, rest = name.group(), rest[name.end() :]
        if data != "root":
            if rest:
                raise TemplateError("InvalidTemplate", UNSUPPORTED)
            return _Path(word, (), data=data)
        if rest and rest[0] not in "./":
            raise _syntax(part, line, f"{word} is not a valid path")
        rest = rest[1:]
    while rest.startswith("../"):
        up, rest = up + 1, rest[3:]
    if rest in ("..", "."):
        up, rest = up + (rest == ".."), ""
    elif rest.startswith("./"):
        rest = rest[2:]
    segments: list[str] = []
    pos = 0
    while pos < len(rest):
        if rest[pos] == "[":
            end = rest.find("]", pos)
            if end < 0:
                raise _syntax(part, line, f"{word} is not a valid path")
            segments.append(rest[pos + 1 : end])
            pos = end + 1
        else:
            name = _ID.match(rest, pos)
            if name is None:
                raise _syntax(part, line, f"{word} is not a valid path")
            segments.append(name.group())
            pos = name.end()
        if pos < len(rest):
            if rest[pos] not in "./" or pos + 1 == len(rest):
                raise _syntax(part, line, f"{word} is not a valid path")
            pos += 1
    # "this" names the context itself, and only at the start of a path.
    if segments[:1] == ["this"] and not rest.startswith("["):
        segments = segments[1:]
    return _Path(word, tuple(segments), up, data)


# -- rendering ----------------------------------------------------------------


class _Missing:
    """The value of a path that leads nowhere (JavaScript's undefined)."""


_MISSING = _Missing()

# Handlebars' escaping of {{x}}, applied in the HTML part only. SES's guide says
# SES itself leaves HTML unescaped; Sesame escapes, so data cannot inject markup,
# and {{{x}}} is there for HTML that is meant to pass through.
_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#x27;",
    "`": "&#x60;",
    "=": "&#x3D;",
}
_ESCAPED = re.compile("[&<>\"'`=]")


@dataclass(slots=True)
class _Scope:
    """One context of the stack: the value, and the @-variables of its loop."""

    value: Any
    data: dict[str, Any]


@dataclass(slots=True)
class _Budget:
    steps: int = MAX_STEPS
    chars: int = MAX_OUTPUT_CHARS


class _Renderer:
    """Render one part against data; the budget is shared by all parts."""

    def __init__(self, program: _Program, escape: bool, budget: _Budget) -> None:
        self.program = program
        self.escape = escape
        self.budget = budget
        self.out: list[str] = []

    def run(self, data: dict[str, Any]) -> str:
        self._nodes(self.program.nodes, [_Scope(data, {})], 0)
        return "".join(self.out)

    def _nodes(self, nodes: list[_Node], stack: list[_Scope], depth: int) -> None:
        if depth > MAX_RENDER_DEPTH:
            raise TemplateError(
                "InvalidTemplate",
                f"Rendering goes deeper than {MAX_RENDER_DEPTH} blocks and partials.",
            )
        for node in nodes:
            self._step()
            if isinstance(node, str):
                self._emit(node)
            elif isinstance(node, _Var):
                self._var(node, stack)
            elif isinstance(node, _Block):
                self._block(node, stack, depth)
            else:
                self._nodes(self.program.partials[node.name], stack, depth + 1)

    def _var(self, node: _Var, stack: list[_Scope]) -> None:
        value = _lookup(node.path, stack)
        if value is _MISSING:
            raise TemplateError(
                "MissingRenderingAttribute",
                f"Attribute '{node.path.text}' is not present in the rendering data.",
            )
        text = _stringify(value)
        if node.escape and self.escape:
            text = _ESCAPED.sub(lambda m: _ESCAPES[m.group()], text)
        self._emit(text)

    def _block(self, node: _Block, stack: list[_Scope], depth: int) -> None:
        value = _lookup(node.path, stack)
        depth += 1
        if node.helper in ("if", "unless"):
            chosen = (
                node.program
                if _truthy(value) == (node.helper == "if")
                else node.inverse
            )
            if chosen:
                self._nodes(chosen, stack, depth)
        elif node.helper == "with":
            if _truthy(value):
                self._nodes(
                    node.program, [*stack, _Scope(value, stack[-1].data)], depth
                )
            elif node.inverse:
                self._nodes(node.inverse, stack, depth)
        else:
            items = _items(value)
            if not items:
                if node.inverse:
                    self._nodes(node.inverse, stack, depth)
                return
            last = len(items) - 1
            for index, (key, item) in enumerate(items):
                self._step()
                data = {
                    "index": index,
                    "key": key,
                    "first": index == 0,
                    "last": index == last,
                }
                self._nodes(node.program, [*stack, _Scope(item, data)], depth)

    def _emit(self, text: str) -> None:
        self.budget.chars -= len(text)
        if self.budget.chars < 0:
            raise TemplateError(
                "InvalidRenderingParameter",
                f"The rendered template is longer than {MAX_OUTPUT_CHARS} characters.",
            )
        self.out.append(text)

    def _step(self) -> None:
        self.budget.steps -= 1
        if self.budget.steps < 0:
            raise TemplateError(
                "InvalidRenderingParameter",
                f"Rendering takes more than {MAX_STEPS} steps.",
            )


def _lookup(path: _Path, stack: list[_Scope]) -> Any:
    """Resolve a path against the context stack; _MISSING if it leads nowhere."""
    if path.data is not None and path.data != "root":
        return stack[-1].data.get(path.data, _MISSING)
    if path.data == "root":
        value = stack[0].value
    elif path.up >= len(stack):
        return _MISSING
    else:
        value = stack[-1 - path.up].value
    for segment in path.segments:
        if isinstance(value, dict):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list | str) and segment == "length":
            value = len(value)
        elif (
            isinstance(value, list) and segment.isdigit() and int(segment) < len(value)
        ):
            value = value[int(segment)]
        else:
            return _MISSING
    return value


def _truthy(value: Any) -> bool:
    """Handlebars' truth: false, null, undefined, "", 0 and [] are false."""
    if value is _MISSING or value is None or value is False:
        return False
    if isinstance(value, str | list | int | float):
        return bool(value)
    return True


def _items(value: Any) -> list[tuple[Any, Any]]:
    """The (key, item) pairs #each visits: list indexes or object keys."""
    if isinstance(value, list):
        return list(enumerate(value))
    if isinstance(value, dict):
        return list(value.items())
    return []


def _stringify(value: Any) -> str:
    """Write a JSON value the way JavaScript's String() does."""
    if value is None or value is _MISSING:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", repr(value))
    if isinstance(value, list):
        return ",".join(_stringify(item) for item in value)
    return "[object Object]"


# -- compiling and rendering whole templates ----------------------------------


@dataclass(frozen=True, slots=True)
class Compiled:
    """A parsed template, ready to render against any number of data sets."""

    subject: _Program | None
    text: _Program | None
    html: _Program | None

    def render(self, data: dict[str, Any]) -> Rendered:
        """Render every part; raise TemplateError on a missing attribute or a bound."""
        budget = _Budget()

        def part(program: _Program | None, escape: bool) -> str | None:
            if program is None:
                return None
            return _Renderer(program, escape, budget).run(data)

        subject = part(self.subject, False)
        if subject is not None:
            # A header holds one line; a line break from the data would end it.
            subject = re.sub(r"[\r\n]+", " ", subject)
        return Rendered(subject, part(self.text, False), part(self.html, True))


def compile_template(
    subject: str | None, text: str | None, html: str | None
) -> Compiled:
    """Parse the parts of a template; raise TemplateError("InvalidTemplate")."""
    return Compiled(
        None if subject is None else _parse(subject, "SubjectPart"),
        None if text is None else _parse(text, "TextPart"),
        None if html is None else _parse(html, "HtmlPart"),
    )


def parse_data(data_json: str) -> dict[str, Any]:
    """Parse TemplateData: a JSON object; raise InvalidRenderingParameter."""
    if len(data_json) > MAX_DATA_CHARS:
        raise _bad_data(f"Template data is longer than {MAX_DATA_CHARS} characters.")
    try:
        data = json.loads(data_json, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _bad_data("Template data is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _bad_data("Template data must be a JSON object.")
    if _depth(data) > MAX_DATA_DEPTH:
        raise _bad_data(f"Template data is nested deeper than {MAX_DATA_DEPTH} levels.")
    return data


def render(
    subject: str | None, text: str | None, html: str | None, data_json: str
) -> Rendered:
    """Render a template's parts against TemplateData; raise TemplateError.

    ``{{x}}`` is HTML-escaped in the HTML part only, ``{{{x}}}`` never. A value
    reference to an attribute absent from the data raises
    MissingRenderingAttribute, as SES's TestRenderTemplate does; an absent
    attribute in ``#if``, ``#unless``, ``#with`` or ``#each`` is false or empty.
    A present ``null`` renders as nothing.
    """
    compiled = compile_template(subject, text, html)
    return compiled.render(parse_data(data_json))


def _bad_data(text: str) -> TemplateError:
    return TemplateError("InvalidRenderingParameter", text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _depth(value: Any) -> int:
    """Return how deeply arrays and objects nest in a JSON value, iteratively."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DATA_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


def merge_data(default_json: str, replacement_json: str | None) -> dict[str, Any]:
    """Return a bulk destination's data: its replacement keys over the defaults."""
    data = parse_data(default_json)
    if replacement_json:
        data = {**data, **parse_data(replacement_json)}
    return data


def preview(rendered: Rendered, *, message_id_header: str, date: str) -> str:
    """Return a rendered template as a MIME message with no addresses.

    This is TestRenderTemplate's answer: Date, Message-ID, Subject, then the body.
    """
    placeholder = message.parse_address("preview@sesame.invalid")
    raw = message.build_simple(
        source=placeholder,
        to=[],
        cc=[],
        reply_to=[],
        subject=rendered.subject or "",
        subject_charset="UTF-8",
        text=rendered.text,
        text_charset="UTF-8",
        html=rendered.html,
        html_charset="UTF-8",
    )
    # build_simple begins with the From field; drop it and its folded lines.
    lines = raw.split(b"\r\n")
    first = 1
    while first < len(lines) and lines[first][:1] in (b" ", b"\t"):
        first += 1
    head = f"Date: {date}\r\nMessage-ID: {message_id_header}\r\n".encode()
    return (head + b"\r\n".join(lines[first:])).decode("ascii")


# -- storage ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    """A stored template: name and the three optional parts."""

    name: str
    subject: str | None
    text: str | None
    html: str | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = "name, subject, text_part, html_part, created_at, updated_at"


def check_template(
    name: str, subject: str | None, text: str | None, html: str | None
) -> None:
    """Refuse a bad name, an oversized template or one that does not parse."""
    if not _NAME.match(name):
        raise TemplateError(
            "InvalidParameterValue",
            f"Invalid template name <{name}>: use 1 to 64 letters, digits, '_' or '-'.",
        )
    parts = [p for p in (subject, text, html) if p is not None]
    if any("\x00" in p for p in parts):
        # PostgreSQL stores no NUL in text, and no email needs one.
        raise TemplateError(
            "InvalidParameterValue", "A template cannot contain NUL characters."
        )
    size = sum(len(p.encode()) for p in parts)
    if size > MAX_TEMPLATE_BYTES:
        raise TemplateError(
            "InvalidParameterValue",
            f"Template {name} is {size} bytes long; the limit is {MAX_TEMPLATE_BYTES}.",
        )
    compile_template(subject, text, html)


async def get_template(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> EmailTemplate | None:
    if not _NAME.match(name):
        return None  # never stored, and PostgreSQL refuses some such text
    cur = await conn.execute(
        f"select {_COLUMNS} from email_templates where account_id = %s and name = %s",
        (account_id, name),
    )
    row = await cur.fetchone()
    return None if row is None else EmailTemplate(*row)


async def put_template(
    conn: AsyncConnection[Any],
    account_id: str,
    name: str,
    *,
    subject: str | None,
    text: str | None,
    html: str | None,
    create: bool,
) -> bool:
    """Create (``create``) or replace a template; False if it exists / does not.

    Raises TemplateError when the template is invalid or the account is full.
    """
    check_template(name, subject, text, html)
    if not create:
        cur = await conn.execute(
            "update email_templates set subject = %s, text_part = %s,"
            " html_part = %s, updated_at = now() where account_id = %s and name = %s",
            (subject, text, html, account_id, name),
        )
        return cur.rowcount == 1
    cur = await conn.execute(
        "insert into email_templates (account_id, name, subject, text_part, html_part)"
        " select %s, %s, %s, %s, %s where (select count(*) from email_templates"
        " where account_id = %s) < %s on conflict do nothing",
        (account_id, name, subject, text, html, account_id, MAX_TEMPLATES),
    )
    if cur.rowcount == 1:
        return True
    if await get_template(conn, account_id, name) is not None:
        return False
    raise TemplateError(
        "LimitExceeded", f"An account may store at most {MAX_TEMPLATES} templates."
    )


async def delete_template(
    conn: AsyncConnection[Any], account_id: str, name: str
) -> bool:
    if not _NAME.match(name):
        return False
    cur = await conn.execute(
        "delete from email_templates where account_id = %s and name = %s",
        (account_id, name),
    )
    return cur.rowcount == 1


async def list_templates(
    conn: AsyncConnection[Any], account_id: str, *, after: str | None, limit: int
) -> list[EmailTemplate]:
    """Templates in name order, starting after the name ``after``."""
    cur = await conn.execute(
        f"select {_COLUMNS} from email_templates where account_id = %s"
        " and name > %s order by name limit %s",
        (account_id, (after or "").replace("\x00", ""), limit),
    )
    return [EmailTemplate(*row) for row in await cur.fetchall()]


async def record_rendering_failure(
    conn: AsyncConnection[Any],
    *,
    account_id: str,
    message_id: str,
    source: str,
    from_domain: str | None,
    destination: list[str],
    configuration_set: str | None,
    tags: dict[str, str],
    template_name: str,
    error: TemplateError,
) -> None:
    """Record an accepted templated send that could not be rendered.

    As in SES, the caller got a MessageId; nothing is delivered, and a
    rendering_failure event (which event destinations receive) says why. The
    message row has no recipients, so it counts toward no quota or statistic.
    """
    # jsonb holds no NUL, which an inline template's attribute name may carry.
    detail = {
        "errorMessage": error.message.replace("\x00", ""),
        "templateName": template_name.replace("\x00", ""),
        "destination": destination,
    }
    async with conn.transaction():
        await conn.execute(
            "insert into messages (id, account_id, source, from_domain, subject, raw,"
            " recipient_count, interface, configuration_set, tags)"
            " values (%s, %s, %s, %s, null, %s, 0, 'api', %s, %s)",
            (
                message_id,
                account_id,
                source,
                from_domain,
                b"",
                configuration_set,
                json.dumps(tags) if tags else None,
            ),
        )
        await conn.execute(
            "insert into events (account_id, message_id, event_type, detail)"
            " values (%s, %s, 'rendering_failure', %s)",
            (account_id, message_id, json.dumps(detail)),
        )

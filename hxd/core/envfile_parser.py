"""systemd 252's ``EnvironmentFile=`` parser: what a service gets from these exact bytes, and where each part came from.

Why a port and not python-dotenv or ``bash``: on real files both disagree with systemd most of the time (trailing
``# comments``, ``export``, escapes, text glued after a closing quote, invalid names, bad bytes), and the only
question hxd has to answer is "what will the service see?". So the parser below is systemd 252's own state machine
(``src/basic/env-file.c`` ``parse_env_file_internal()``), followed by what PID1 does next
(``load_env_file_push()``, ``strv_env_replace_consume()``, ``strv_env_clean_with_callback()``), state for state.
The tests compare it with ``libsystemd-shared-252.so`` on tens of thousands of random files.

On top of what systemd computes, every assignment keeps where it came from (byte offsets, 1-based lines) and the
facts a validator needs to explain a surprise (text glued after a quote, a ``#`` that looks like a comment, an
unterminated quote, a continuation line). No validator rules live here: this module only says what systemd does.

It works on bytes and touches no disk: ``envfile_reader`` reads a file the way PID1 does and parses it here,
``envfile_writer`` sets a variable so that this parser reads it back (which is why the writer sees the parser's
state at end of file and systemd's name and quoting rules, exported below).

Nothing here imports D-Bus: the core layer must work offline.
"""

from __future__ import annotations

import bisect
import enum
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

READ_LIMIT = 64 * 1024 * 1024 - 1
"""systemd's ``READ_FULL_BYTES_MAX`` (``fileio.c``): a larger file fails to load as a whole."""

_LF, _BACKSLASH, _EQUALS, _HASH = 0x0A, 0x5C, 0x3D, 0x23
_SINGLE_QUOTE, _DOUBLE_QUOTE = 0x27, 0x22
_NEWLINE = b"\n\r"
_BLANK = b" \t"
_COMMENT_START = b"#;"
SHELL_NEED_ESCAPE = '"\\`$'
"""The only characters a backslash escapes inside ``"..."`` (systemd's ``SHELL_NEED_ESCAPE``), so the only ones
the writer escapes there."""
_DQ_ESCAPABLE = SHELL_NEED_ESCAPE.encode()

_SKIP_WHITESPACE = re.compile(rb"[ \t\n\r]*")
_SKIP_BLANKS = re.compile(rb"[ \t]*")
_KEY_RUN = re.compile(rb"[^=\n\r]*")
_VALUE_RUN = re.compile(rb"[^\\\n\r]*")
_SINGLE_QUOTED_RUN = re.compile(rb"[^']*")
_DOUBLE_QUOTED_RUN = re.compile(rb'[^"\\]*')
_COMMENT_RUN = re.compile(rb"[^\\\n\r]*")
_HASH_AFTER_BLANK = re.compile(rb"[ \t]#")
_LINE_BREAK = re.compile(rb"\r\n?|\n")

NONCHARACTER = re.compile(
    "[\ufdd0-\ufdef" + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)) + "]"
)
"""The noncharacters that systemd's ``unichar_is_valid()`` refuses and Python's UTF-8 codec accepts."""


@dataclass(frozen=True, slots=True)
class Assignment:
    """One ``KEY=VALUE`` that systemd's parser produced, in file order, before duplicates and bad names are dropped.

    ``key`` and ``value`` are exactly what the parser hands on (bytes that are not valid UTF-8 show as U+FFFD; such
    a file does not load). ``start``/``end`` are byte offsets: ``data[start:end]`` is the whole assignment text,
    from the first byte of the key up to (not including) the line break that ends it, so a writer can replace it
    without touching anything else. ``line``/``end_line`` are 1-based; LF, CRLF and a lone CR each end a line,
    because a lone CR ends a line for systemd too.
    """

    key: str
    value: str
    line: int
    end_line: int
    start: int
    end: int
    valid_name: bool
    """False when systemd drops the assignment for its name (``export A``, ``1A``, ``A-B``, a BOM-prefixed key)."""
    quoted: bool
    """At least one part of the value was in single or double quotes."""
    glued_after_quote: bool
    """Non-blank text followed a closing quote and was appended to the value (``A="x" # c`` gives ``x# c``)."""
    inline_comment: bool
    """An unquoted ``#`` follows a blank, which dotenv and bash read as a comment but systemd keeps in the value."""
    unterminated_quote: bool
    """A quote was still open at end of file, so the value took the whole rest of the file."""
    continued: bool
    """A backslash before a line break joined lines (or, before CRLF, ended the value and orphaned the next line)."""


@dataclass(frozen=True, slots=True)
class EnvFile:
    """What systemd 252 makes of one environment file, plus where each piece came from.

    ``loads`` is False when systemd rejects the whole file (NUL byte, invalid UTF-8 in something assigned, over
    ``READ_LIMIT``): the unit then fails to start, or the file is skipped with ``EnvironmentFile=-``. ``error`` is
    one line saying what and where. ``environment`` is what the service gets from this file (empty when the file does
    not load), in systemd's order. ``ignored_assignments`` are the ``KEY=VALUE`` strings PID1 logs as "Ignoring
    invalid environment assignment" and drops. ``assignments`` lists every assignment the parser produced, even when
    the file does not load (empty only when systemd never got to parse it: NUL byte or too large).
    ``lines_without_equals`` are lines with text but no ``=``, which systemd drops silently. ``swallowed_lines`` are
    non-blank lines that systemd 252 treats as comment because the comment line before them ends in a backslash
    (v254 and later read them: behaviour differs between versions).
    """

    loads: bool
    error: str | None
    environment: dict[str, str]
    assignments: list[Assignment]
    ignored_assignments: list[str]
    lines_without_equals: list[int] = field(default_factory=list)
    swallowed_lines: list[int] = field(default_factory=list)


class ParserState(enum.IntEnum):
    """The states of ``parse_env_file_internal()``, same names and same meaning; values index ``_Scanner.steps``.

    Public because an appending writer must know the state at end of file (``scan_envfile``).
    """

    PRE_KEY = 0
    KEY = 1
    PRE_VALUE = 2
    VALUE = 3
    VALUE_ESCAPE = 4
    SINGLE_QUOTE_VALUE = 5
    DOUBLE_QUOTE_VALUE = 6
    DOUBLE_QUOTE_VALUE_ESCAPE = 7
    COMMENT = 8
    COMMENT_ESCAPE = 9


_PUSH_AT_EOF = frozenset(
    {
        ParserState.PRE_VALUE,
        ParserState.VALUE,
        ParserState.VALUE_ESCAPE,
        ParserState.SINGLE_QUOTE_VALUE,
        ParserState.DOUBLE_QUOTE_VALUE,
        ParserState.DOUBLE_QUOTE_VALUE_ESCAPE,
    }
)
IN_QUOTES = frozenset(
    {ParserState.SINGLE_QUOTE_VALUE, ParserState.DOUBLE_QUOTE_VALUE, ParserState.DOUBLE_QUOTE_VALUE_ESCAPE}
)
"""States inside an open quote: at end of file the quote is unterminated, and anything appended would join it."""


@dataclass(slots=True)
class _Pending:
    """The assignment being built; ``trim_at`` is systemd's ``last_value_whitespace`` (None for SIZE_MAX)."""

    start: int
    key: bytearray
    value: bytearray = field(default_factory=bytearray)
    trim_at: int | None = None
    quoted: bool = False
    glued: bool = False
    inline_comment: bool = False
    continued: bool = False


class _Lines:
    """Maps byte offsets to 1-based line numbers; LF, CRLF and a lone CR each end one line."""

    def __init__(self, data: bytes) -> None:
        self.starts = [0, *(m.end() for m in _LINE_BREAK.finditer(data))]

    def of(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)


def _decode(raw: bytes) -> tuple[str, bool]:
    """Decode for display, and say whether systemd's ``utf8_is_valid()`` accepts the bytes.

    systemd wants strict UTF-8 (no surrogates, no overlong forms, nothing above U+10FFFF), as Python's codec does,
    and its ``unichar_is_valid()`` also refuses the noncharacters U+FDD0..U+FDEF and U+xFFFE/U+xFFFF, which Python
    accepts, so those are checked on top. Invalid bytes show as U+FFFD, as in systemd's own log lines.
    """
    if raw.isascii():
        return raw.decode("ascii"), True
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace"), False
    return text, NONCHARACTER.search(text) is None


def name_is_valid(name: str, arg_max: int) -> bool:
    """``env_name_is_valid()``: bash's rule ``[A-Za-z_][A-Za-z0-9_]*``, at most ARG_MAX - 2 bytes.

    For ASCII text ``str.isidentifier()`` is exactly that rule, and much cheaper than a regular expression.
    """
    return name.isascii() and name.isidentifier() and len(name) <= arg_max - 2


def assignment_is_valid(key: str, value: str, arg_max: int) -> bool:
    """``env_assignment_is_valid()`` for a loaded (hence valid UTF-8) assignment.

    systemd checks the name, the value (at most ARG_MAX - 3 bytes) and ``KEY=VALUE`` (at most ARG_MAX - 1 bytes);
    with a name of at least one byte the total bound already implies the value bound, so only the total is checked.
    """
    return name_is_valid(key, arg_max) and len(key.encode()) + 1 + len(value.encode()) <= arg_max - 1


def sysconf_arg_max() -> int:
    """``sysconf(_SC_ARG_MAX)``, which systemd uses to drop overlong assignments; a quarter of the stack limit."""
    return os.sysconf("SC_ARG_MAX")


class _Scanner:
    """``parse_env_file_internal()`` and its push callback: one method per state, same transitions as in C.

    Each state method consumes a whole run of ordinary bytes at once (a regular expression finds the next byte that
    matters in that state), which keeps a 50 MB file fast in Python; every special byte still makes the same
    transition as in C, so the result is the same byte for byte.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.state = self.eof_state = ParserState.PRE_KEY
        self.pending = _Pending(0, bytearray())
        self.lines = _Lines(data)
        self.arg_max = sysconf_arg_max()
        self.assignments: list[Assignment] = []
        self.error: str | None = None
        self.keyless: list[int] = []
        self.swallowed: list[int] = []
        self.steps: tuple[Callable[[], None], ...] = (
            self._pre_key,
            self._key,
            self._pre_value,
            self._value,
            self._value_escape,
            self._single_quote,
            self._double_quote,
            self._double_quote_escape,
            self._comment,
            self._comment_escape,
        )

    def run(self) -> None:
        """Scan to the end, then do what C does after its loop (push a value still open, drop a bare key)."""
        size, steps = len(self.data), self.steps
        while self.pos < size:
            steps[self.state]()
        self.eof_state = self.state
        if self.state in _PUSH_AT_EOF:
            self._push(size, trim=self.state is ParserState.VALUE)
        elif self.state is ParserState.KEY:
            self.keyless.append(self.lines.of(self.pending.start))

    def _next(self, pattern: re.Pattern[bytes]) -> tuple[int, int | None]:
        """Skip the run matching ``pattern``; return its start and the byte after it (consumed), None at EOF."""
        data, start = self.data, self.pos
        match = pattern.match(data, start)  # every pattern used here also matches an empty run
        end = start if match is None else match.end()
        if end >= len(data):
            self.pos = end
            return start, None
        self.pos = end + 1
        return start, data[end]

    def _pre_key(self) -> None:
        _, c = self._next(_SKIP_WHITESPACE)
        if c is None:
            return
        if c in _COMMENT_START:
            self.state = ParserState.COMMENT
        else:  # even '=' starts a key here, so "=A=1" has the key "=A"
            self.pending = _Pending(self.pos - 1, bytearray((c,)))
            self.state = ParserState.KEY

    def _key(self) -> None:
        start, c = self._next(_KEY_RUN)
        self.pending.key += self.data[start : self.pos if c is None else self.pos - 1]
        if c == _EQUALS:
            self.state = ParserState.PRE_VALUE
        elif c is not None:  # a line break: a line without '=' is dropped silently
            self.keyless.append(self.lines.of(self.pending.start))
            self.state = ParserState.PRE_KEY

    def _pre_value(self) -> None:
        _, c = self._next(_SKIP_BLANKS)
        if c is None:
            return
        pending, at = self.pending, self.pos - 1
        if c in _NEWLINE:
            self._push(at, trim=False)
            return
        pending.glued |= pending.quoted  # back here after a closing quote: whatever follows is appended
        if c == _SINGLE_QUOTE:
            pending.quoted, self.state = True, ParserState.SINGLE_QUOTE_VALUE
        elif c == _DOUBLE_QUOTE:
            pending.quoted, self.state = True, ParserState.DOUBLE_QUOTE_VALUE
        elif c == _BACKSLASH:
            self.state = ParserState.VALUE_ESCAPE
        else:
            pending.value.append(c)
            pending.inline_comment |= c == _HASH and self.data[at - 1] in _BLANK
            self.state = ParserState.VALUE

    def _value(self) -> None:
        start, c = self._next(_VALUE_RUN)
        end = self.pos if c is None else self.pos - 1
        if end > start:
            self._append_unquoted(start, end)
        if c == _BACKSLASH:
            self.pending.trim_at = None
            self.state = ParserState.VALUE_ESCAPE
        elif c is not None:
            self._push(end, trim=True)

    def _append_unquoted(self, start: int, end: int) -> None:
        """Append plain value bytes, tracking trailing blanks exactly as ``last_value_whitespace`` does."""
        pending, run = self.pending, self.data[start:end]
        body = run.rstrip(_BLANK)
        if body:
            pending.trim_at = len(pending.value) + len(body) if len(body) < len(run) else None
        elif pending.trim_at is None:
            pending.trim_at = len(pending.value)
        pending.value += run
        pending.inline_comment |= _HASH_AFTER_BLANK.search(self.data, start, end) is not None

    def _value_escape(self) -> None:
        c = self.data[self.pos]
        self.pos += 1
        if c in _NEWLINE:
            self.pending.continued = True
        else:
            self.pending.value.append(c)
        self.state = ParserState.VALUE

    def _single_quote(self) -> None:
        start, c = self._next(_SINGLE_QUOTED_RUN)
        self.pending.value += self.data[start : self.pos if c is None else self.pos - 1]
        if c is not None:
            self.state = ParserState.PRE_VALUE

    def _double_quote(self) -> None:
        start, c = self._next(_DOUBLE_QUOTED_RUN)
        self.pending.value += self.data[start : self.pos if c is None else self.pos - 1]
        if c == _DOUBLE_QUOTE:
            self.state = ParserState.PRE_VALUE
        elif c is not None:
            self.state = ParserState.DOUBLE_QUOTE_VALUE_ESCAPE

    def _double_quote_escape(self) -> None:
        c = self.data[self.pos]
        self.pos += 1
        if c in _DQ_ESCAPABLE:
            self.pending.value.append(c)
        elif c == _LF:  # only LF continues a line here: "\" + CR keeps both bytes
            self.pending.continued = True
        else:
            self.pending.value += bytes((_BACKSLASH, c))
        self.state = ParserState.DOUBLE_QUOTE_VALUE

    def _comment(self) -> None:
        _, c = self._next(_COMMENT_RUN)
        if c == _BACKSLASH:
            self.state = ParserState.COMMENT_ESCAPE
        elif c is not None:
            self.state = ParserState.PRE_KEY

    def _comment_escape(self) -> None:
        """systemd 252 eats any byte after a backslash in a comment, even LF: the next line becomes comment too."""
        if self._swallows_line(self.pos):
            self.swallowed.append(self.lines.of(self.pos + 1))
        self.pos += 1
        self.state = ParserState.COMMENT

    def _swallows_line(self, at: int) -> bool:
        """True when the byte at ``at`` is a line break and the line after it has content that gets lost."""
        data = self.data
        if data[at] not in _NEWLINE or data[at : at + 2] == b"\r\n":
            return False  # an eaten CR of CRLF leaves the LF to end the comment
        rest = _LINE_BREAK.search(data, at + 1)
        return data[at + 1 : rest.start() if rest else len(data)].strip(_BLANK) != b""

    def _push(self, end: int, *, trim: bool) -> None:
        """``push()``: trim key and (unquoted) value as C does, check UTF-8 like ``check_utf8ness_and_warn()``."""
        pending = self.pending
        raw_value = pending.value[: pending.trim_at] if trim and pending.trim_at is not None else pending.value
        key, key_ok = _decode(bytes(pending.key).rstrip(_BLANK))
        value, value_ok = _decode(bytes(raw_value))
        line = self.lines.of(pending.start)
        if self.error is None and not (key_ok and value_ok):
            part = f"key {key!r}" if not key_ok else f"value of {key!r}"
            self.error = f"line {line}: invalid UTF-8 in the {part}; systemd rejects the whole file"
        self.assignments.append(
            Assignment(
                key=key,
                value=value,
                line=line,
                end_line=self.lines.of(end - 1),
                start=pending.start,
                end=end,
                valid_name=name_is_valid(key, self.arg_max),
                quoted=pending.quoted,
                glued_after_quote=pending.glued,
                inline_comment=pending.inline_comment,
                unterminated_quote=self.state in IN_QUOTES,
                continued=pending.continued,
            )
        )
        self.state = ParserState.PRE_KEY


def _environment(assignments: list[Assignment], arg_max: int) -> tuple[dict[str, str], list[str]]:
    """``strv_env_replace_consume()`` then ``strv_env_clean_with_callback()``.

    Duplicates are matched on the text before the first ``=`` of ``KEY=VALUE``: the last one wins but keeps the
    place of the first. Keys starting with ``=`` therefore all share the empty name and replace each other, which is
    why the ignored list can hold fewer entries than there are bad lines.
    """
    merged: dict[str, tuple[str, str]] = {}
    for assignment in assignments:
        merged[assignment.key.partition("=")[0]] = (assignment.key, assignment.value)
    environment: dict[str, str] = {}
    ignored: list[str] = []
    for key, value in merged.values():
        if assignment_is_valid(key, value, arg_max):
            environment[key] = value
        else:
            ignored.append(f"{key}={value}")
    return environment, ignored


def _rejected_unread(error: str) -> EnvFile:
    """A file systemd refuses before parsing (``read_full_file()`` fails), so there is nothing to list."""
    return EnvFile(loads=False, error=error, environment={}, assignments=[], ignored_assignments=[])


def _unreadable_reason(data: bytes) -> str | None:
    """What ``read_full_file()`` refuses: more than ``READ_LIMIT`` bytes, or a NUL byte anywhere."""
    if len(data) > READ_LIMIT:
        return f"the file is {len(data)} bytes; systemd refuses files over {READ_LIMIT} bytes"
    nul = data.find(b"\0")
    if nul >= 0:
        line = _Lines(data[:nul]).of(nul)
        return f"line {line}: NUL byte at offset {nul}; systemd rejects the whole file"
    return None


def scan_envfile(data: bytes) -> tuple[EnvFile, ParserState]:
    """Parse ``data`` and also return the parser's state at end of file, which an appending writer needs."""
    reason = _unreadable_reason(data)
    if reason is not None:
        return _rejected_unread(reason), ParserState.PRE_KEY
    scanner = _Scanner(data)
    scanner.run()
    loads = scanner.error is None
    environment, ignored = _environment(scanner.assignments, scanner.arg_max) if loads else ({}, [])
    parsed = EnvFile(
        loads=loads,
        error=scanner.error,
        environment=environment,
        assignments=scanner.assignments,
        ignored_assignments=ignored,
        lines_without_equals=scanner.keyless,
        swallowed_lines=scanner.swallowed,
    )
    return parsed, scanner.eof_state


def parse_envfile(data: bytes) -> EnvFile:
    """What systemd 252 makes of a file with these exact bytes (see ``EnvFile``); never raises for bad content."""
    return scan_envfile(data)[0]

"""Setting one variable in an environment file: the text systemd 252 reads back as the value, written atomically.

The migration points Ollama at its new store by changing ``OLLAMA_MODELS`` in a file an operator also edits, so
the write must change that one assignment and no other byte, produce what ``envfile_parser`` (systemd's own parser)
reads back as exactly the value given, and never leave a half-written file, a lost variable or a unit that fails
to start. Hence the quoting rule is systemd's own ``write_env_var()``, the edit is placed by the parser's byte
offsets and its state at end of file, and the file is replaced by rename (``hxd.core.atomic``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hxd.core.atomic import replace_file
from hxd.core.envfile_parser import (
    IN_QUOTES,
    NONCHARACTER,
    SHELL_NEED_ESCAPE,
    EnvFile,
    ParserState,
    assignment_is_valid,
    name_is_valid,
    scan_envfile,
    sysconf_arg_max,
)
from hxd.core.envfile_reader import os_reason, read_regular_file
from hxd.core.errors import Failed, InvalidArgs

_SHELL_NEED_QUOTES = SHELL_NEED_ESCAPE + "*?['()<>|&;!"
_UNREPRESENTABLE = re.compile("[\x00\ud800-\udfff]|" + NONCHARACTER.pattern)
# write_env_var() quotes a value with a control character (below 0x20, or DEL), a blank or SHELL_NEED_QUOTES in it.
_NEEDS_QUOTES = re.compile("[\x00-\x20\x7f" + re.escape(_SHELL_NEED_QUOTES) + "]")
_NEEDS_BACKSLASH = re.compile("[" + re.escape(SHELL_NEED_ESCAPE) + "]")


def _check_representable(key: str, value: str) -> None:
    """Refuse what systemd would drop or reject, so a write can never make a unit fail or lose the variable."""
    if not name_is_valid(key, sysconf_arg_max()):
        raise InvalidArgs(
            f"{key!r} is not a valid environment variable name: use letters, digits and '_', not starting with a digit"
        )
    bad = _UNREPRESENTABLE.search(value)
    if bad is not None:
        raise InvalidArgs(
            f"the value for {key} contains U+{ord(bad.group()):04X}, which an environment file cannot hold"
            " (systemd rejects NUL, surrogates and noncharacters)"
        )
    if not assignment_is_valid(key, value, sysconf_arg_max()):
        raise InvalidArgs(f"the value for {key} is too long: systemd drops assignments longer than ARG_MAX")


def format_assignment(key: str, value: str) -> str:
    """``KEY=VALUE`` (no line break) that systemd 252 reads back as exactly ``value``.

    The rule is systemd's own writer, ``write_env_var()``: a value with a control character, a blank or a shell
    special character is put in double quotes, with a backslash before each double quote, backslash, backquote and
    ``$`` (the only escapes systemd undoes there); anything else is written bare. Raises ``InvalidArgs`` for a bad
    name or a value systemd cannot represent.
    """
    _check_representable(key, value)
    if _NEEDS_QUOTES.search(value) is None:
        return f"{key}={value}"
    return '{}="{}"'.format(key, _NEEDS_BACKSLASH.sub(lambda m: "\\" + m.group(), value))


def _append_separator(parsed: EnvFile, state: ParserState, key: str) -> bytes:
    """What must go between the old end of file and a new line so the parser starts it as a fresh key.

    After a comment or a value ending in a backslash the first line break is eaten, hence two; nothing changes
    the meaning of what was there. Inside an unterminated quote any appended text would join that value: refuse.
    """
    if state in IN_QUOTES:
        line = parsed.assignments[-1].line
        raise Failed(
            f"the quote opened on line {line} is never closed, so {key} cannot be appended; close that quote first"
        )
    if state is ParserState.PRE_KEY:
        return b""
    if state in (ParserState.COMMENT_ESCAPE, ParserState.VALUE_ESCAPE):
        return b"\n\n"
    return b"\n"


def with_variable(data: bytes, key: str, value: str) -> bytes:
    """The file ``data`` with ``key`` set to ``value``: the pure half of ``set_variable``, testable without disk.

    The last assignment of ``key`` (the one systemd uses) is replaced in place, from its first byte to the line
    break that ends it; every other byte stays as it was. Without one, a line is appended. Raises ``InvalidArgs``
    for a bad key or value and ``Failed`` when systemd rejects the file as it is (fix that first).
    """
    text = format_assignment(key, value).encode()
    parsed, state = scan_envfile(data)
    if not parsed.loads:
        raise Failed(f"systemd rejects this file as it is ({parsed.error}); fix that before setting {key}")
    last = next((a for a in reversed(parsed.assignments) if a.key == key), None)
    if last is not None:
        return data[: last.start] + text + data[last.end :]
    return data + _append_separator(parsed, state, key) + text + b"\n"


def set_variable(path: Path, key: str, value: str) -> None:
    """Set ``key`` to ``value`` in the environment file ``path``, changing nothing else in it.

    See ``with_variable`` for what changes. The new content goes to a temporary file in the same directory (so the
    rename is atomic), is fsynced, gets the original's owner, group and mode, replaces the original by rename, and
    the directory is fsynced. A symlink is followed, so the link stays a link. On any failure the original is left
    as it was and no temporary file remains. Raises ``InvalidArgs`` for a bad key or value, ``Failed`` (one
    line naming the path) for everything else.
    """
    format_assignment(key, value)  # refuse bad input before touching the disk
    data, info = read_regular_file(path)
    try:
        new = with_variable(data, key, value)
    except Failed as error:
        raise Failed(f"{path}: {error}") from error
    target = Path(os.path.realpath(path))
    try:
        replace_file(target, new, like=info)
    except OSError as error:
        raise Failed(f"{path}: cannot write: {os_reason(error)}") from error

"""The one rule for every path hxd is told to work in: hxd.toml's ``[paths]`` and a method's path options.

hxd runs as root and the paths it is given are where it creates, moves, symlinks and chowns (a migration, ``audit
--fix``). A typo in hxd.toml, or an option a caller passes, must never point it at the system itself: with
``canonical = "/etc/default"`` the audit offered to chown that directory to ollama. So a path is refused when it is,
or resolves into (symlinks followed, now), one of SYSTEM_TREES; when it is, or resolves to, one of SHARED_DIRS
itself; when it has a ``..`` component or a non-printing character (a newline, a bidi override); and when it is
relative. The lists are documented in hxd.toml(5), "Refused paths".
"""

from __future__ import annotations

import os
import unicodedata
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

# The system's own trees: refused with everything below them. /var/run and /var/lock are symlinks into /run on
# Debian 12 and refused through it; they are listed for systems where they are directories.
SYSTEM_TREES = (
    "/bin",
    "/boot",
    "/dev",
    "/efi",
    "/etc",
    "/lib*",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/backups",
    "/var/cache/apt",
    "/var/cache/debconf",
    "/var/lib/apt",
    "/var/lib/dbus",
    "/var/lib/dpkg",
    "/var/lib/polkit-1",
    "/var/lib/systemd",
    "/var/lib/ucf",
    "/var/lock",
    "/var/log/journal",
    "/var/mail",
    "/var/run",
    "/var/spool",
)
# Directories other software shares: refused themselves, fine to work below (/var/lib/hxd, /opt/hx-infrastructure).
SHARED_DIRS = (
    "/",
    "/home",
    "/media",
    "/mnt",
    "/opt",
    "/srv",
    "/tmp",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/log",
    "/var/tmp",
)
_SEE = "hxd.toml(5), Refused paths"


def check_path(value: str | os.PathLike[str]) -> Path:
    """``value`` as a Path when hxd may work there, else ValueError with a one-line reason; callers put the key in
    front (``paths.canonical: ...``, ``option bulk: ...``). Symlinks are resolved as they are now."""
    text = os.fspath(value)
    odd = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf")), None)
    if odd is not None:
        raise ValueError(f"has the non-printing character U+{ord(odd):04X}, got {text!r}; write the path without it")
    written = PurePosixPath(text)
    if not written.is_absolute():
        raise ValueError(f"must be an absolute path, got {text!r}")
    if ".." in written.parts:
        raise ValueError(f"must not contain '..', got {text!r}; write the path it means without it")
    path = PurePosixPath("/", *written.parts[1:])  # POSIX keeps a leading "//" apart; the kernel does not
    _refuse_system(path, repr(text))
    resolved = PurePosixPath(os.path.realpath(path))
    if resolved != path:
        _refuse_system(resolved, f"{text!r} (which resolves to {str(resolved)!r})")
    return Path(path)


def _refuse_system(path: PurePosixPath, shown: str) -> None:
    for tree in SYSTEM_TREES:
        pattern = PurePosixPath(tree).parts
        if len(path.parts) >= len(pattern) and all(map(fnmatchcase, path.parts, pattern)):
            top = PurePosixPath(*path.parts[: len(pattern)])
            raise ValueError(f"{shown} is in {top}, which hxd never writes; pick another path ({_SEE})")
    if str(path) in SHARED_DIRS:
        raise ValueError(f"{shown} is {path} itself, which other software shares; pick a directory below it ({_SEE})")

"""Errors hxd reports to a caller.

Every failure a caller can see is one of these classes. The bus adapter turns the class name into the D-Bus error
name (``org.hxinfra.hxd1.Error.<ClassName>``) and hxctl turns it into an exit code, so the name is the contract:
rename a class and you break clients. Messages are one line that names the input and says what to do.
"""


class HxdError(Exception):
    """Base of every error hxd reports to a caller."""


class InvalidArgs(HxdError):
    """The caller passed something hxd cannot use (unknown option, wrong type, bad value)."""


class InvalidConfig(HxdError):
    """The configuration file cannot be read or does not validate."""


class NotFound(HxdError):
    """A file, model or object the caller named does not exist."""


class Unreadable(HxdError):
    """A file hxd was asked to read cannot be read: missing, no permission, not a regular file, too large."""


class NotAuthorized(HxdError):
    """The caller is not allowed to do this (polkit said no, or not root when polkit is absent)."""


class Busy(HxdError):
    """Another job holds the node (or one of the same kind runs), in hxd or in hxctl --offline; the message names it."""


class LimitsExceeded(HxdError):
    """The caller has as many calls to hxd pending as one caller may (or hxd as it takes from all); the call was not
    run: wait for the replies of the earlier calls, then retry."""


class Refused(HxdError):
    """hxd looked and will not do this as things are (a migration's plan, a rollback with nothing to undo); nothing
    was changed, and the message says what to change first."""


class Cancelled(HxdError):
    """The caller (or shutdown) cancelled the job before it finished; nothing was left half done."""


class Failed(HxdError):
    """The operation ran and failed; the message says why."""


def kind(exc: HxdError) -> str:
    """The name of the class of this module that ``exc`` is (or derives from): its D-Bus error name's last part and
    the key of hxctl's exit codes, so subclasses elsewhere never invent new names."""
    for cls in type(exc).__mro__:
        if cls.__module__ == __name__:
            return cls.__name__
    raise AssertionError(f"{type(exc).__name__} does not derive from {HxdError.__name__}")

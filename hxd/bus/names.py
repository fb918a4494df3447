"""Every name hxd uses on the bus, in one place: bus name, paths, interfaces, error names, polkit action ids.

These are the public contract (dbus/org.hxinfra.hxd1.xml documents them; the bus policy and polkit policy in
dbus/ repeat them). Versioned with the trailing 1, as 0pointer's guide to D-Bus versioning asks.
"""

from hxd.core.errors import HxdError, kind

BUS_NAME = "org.hxinfra.hxd1"
MANAGER_PATH = "/org/hxinfra/hxd1"
MANAGER_INTERFACE = "org.hxinfra.hxd1.Manager"
JOB_INTERFACE = "org.hxinfra.hxd1.Job"
JOBS_PATH = "/org/hxinfra/hxd1/jobs"

ERROR_PREFIX = "org.hxinfra.hxd1.Error."
# Any failure that is not one of hxd.core.errors: the caller gets this name and no details.
ERROR_INTERNAL = ERROR_PREFIX + "Internal"

# polkit action ids (dbus/org.hxinfra.hxd1.policy). Read-only methods need none.
ACTION_RELOAD = "org.hxinfra.hxd1.reload"
ACTION_VALIDATE = "org.hxinfra.hxd1.validate"
ACTION_MIGRATE = "org.hxinfra.hxd1.migrate"
ACTION_SMOKE = "org.hxinfra.hxd1.smoke"
ACTION_AUDIT = "org.hxinfra.hxd1.audit"
ACTION_AUDIT_FIX = "org.hxinfra.hxd1.audit-fix"

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"
DBUS_INTERFACE = "org.freedesktop.DBus"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
# What a call to an object nobody exports gets (dbus-fast answers so for an unknown path, too).
ERROR_UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"

SYSTEMD_NAME = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"
SYSTEMD_UNIT = "org.freedesktop.systemd1.Unit"


def error_name(exc: HxdError) -> str:
    """The D-Bus error name for ``exc``, e.g. ``org.hxinfra.hxd1.Error.NotAuthorized``."""
    return ERROR_PREFIX + kind(exc)


def job_path(number: int) -> str:
    """The object path of hxd's job ``number``: ``/org/hxinfra/hxd1/jobs/3``."""
    return f"{JOBS_PATH}/{number}"

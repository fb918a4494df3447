"""The Ollama account and whether it can enter a directory, for the audit and the migration plan alike.

Both ask the same question (can Ollama reach its store?) and must give the same answer: the audit reports a
directory Ollama cannot enter (HX212), the migration plan refuses to move the store below one. The group set comes
from ``os.getgrouplist`` (the user's own groups, as the kernel gives them to its processes), not by enumerating
every group of the system, which is slow with LDAP or sssd.

Access is judged from the mode bits only, as the kernel does without POSIX ACLs.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass

from hxd.core.config import Config


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int  # the group its files get (for Ollama: ollama.group)
    groups: frozenset[int]  # every group its processes may run with: primary, supplementary and ``gid``


def ollama_account(config: Config) -> Account | str:
    """The Ollama account (``ollama.user``, ``ollama.group``), or why there is none.

    Its groups are the user's (primary and supplementary) and ``ollama.group``, which Ollama's unit runs it with
    (``Group=``) even where that is not the user's primary group.
    """
    user, group = config.ollama.user, config.ollama.group
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"the Ollama user {user!r} (ollama.user) does not exist"
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return f"the Ollama group {group!r} (ollama.group) does not exist"
    return Account(user, entry.pw_uid, gid, frozenset([*os.getgrouplist(user, entry.pw_gid), gid]))


def can_enter(st: os.stat_result, account: Account) -> bool:
    """Whether ``account`` may search (traverse) the directory ``st`` describes, by its mode bits."""
    if account.uid == 0:
        return True
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in account.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def user_name(uid: int) -> str:
    """The user's name, or the number where it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner_name(uid: int, gid: int) -> str:
    """``user:group``, each by name where it has one."""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user_name(uid)}:{group}"

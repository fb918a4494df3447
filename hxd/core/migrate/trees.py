"""The directories a migration works in, opened as descriptors that never follow a symlink (hxd.core.safefs).

The source store and bulk storage belong to the ``ollama`` account: each is entered once per run, and every name
below is reached relative to these descriptors. Removal helpers skip a name that turned into a symlink on the way
(it is not the file hxd made) instead of following it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from hxd.core.migrate.copy import Ownership, open_staging
from hxd.core.migrate.plan import Targets
from hxd.core.safefs import Dir, Unsafe


@dataclass
class Trees:
    """The directories one run works in, each opened once, without following a symlink (hxd.core.safefs)."""

    source_blobs: Dir
    source_manifests: Dir
    bulk: Dir
    blobs: Dir
    manifests: Dir
    staging: Dir

    @classmethod
    @contextmanager
    def open(cls, t: Targets, owner: Ownership) -> Iterator[Trees]:
        with ExitStack() as stack:
            source = stack.enter_context(Dir.enter(t.source))
            bulk = stack.enter_context(enter_or_create(t.bulk, owner))
            mode, ids = owner.dir_mode, (owner.uid, owner.gid)
            yield cls(
                source_blobs=stack.enter_context(source.sub("blobs")),
                source_manifests=stack.enter_context(source.sub("manifests")),
                bulk=bulk,
                blobs=stack.enter_context(bulk.make_sub("blobs", mode, ids)),
                manifests=stack.enter_context(bulk.make_sub("manifests", mode, ids)),
                staging=stack.enter_context(open_staging(bulk)),
            )


def enter_or_create(path: Path, owner: Ownership) -> Dir:
    """The directory ``path``, with missing ones (and their missing parents) created with Ollama's owner."""
    missing: list[str] = []
    existing = path
    while not os.path.lexists(existing):
        missing.insert(0, existing.name)
        existing = existing.parent
    directory = Dir.enter(existing)
    for name in missing:
        with directory:
            directory = directory.make_sub(name, owner.dir_mode, (owner.uid, owner.gid))
    return directory


def sub_or_none(parent: Dir, name: str) -> Dir | None:
    """The subdirectory ``name``, or None where there is none (or a symlink, or something else, put there)."""
    try:
        return parent.sub(name)
    except (FileNotFoundError, NotADirectoryError, Unsafe):
        return None


def remove_beneath(directory: Dir, relative: str, *, is_dir: bool = False) -> None:
    """Remove the file (or, ``is_dir``, the empty directory) ``relative`` if it is there; a symlink on the way
    means it is not the one hxd made (skipped, never followed)."""
    head, _, leaf = relative.rpartition("/")
    try:
        parent = directory.sub(head) if head else None
    except (FileNotFoundError, NotADirectoryError, Unsafe):
        return
    with parent or contextlib.nullcontext(directory) as holder:
        (holder.rmdir if is_dir else holder.unlink)(leaf)

"""hxd.core.safefs: a symlink anywhere below a directory descriptor is refused, with openat2 and without it; a
configured path follows only symlinks root made in root's directories."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from hxd.core import safefs
from hxd.core.safefs import Dir, Unsafe


@pytest.fixture(params=["openat2", "per-component"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways of opening beneath a descriptor: the kernel's openat2, and O_NOFOLLOW one component at a time
    (what runs where openat2 is missing or filtered)."""
    monkeypatch.setattr(safefs, "_has_openat2", None if request.param == "openat2" else False)
    yield request.param


def tree(root: Path) -> Path:
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/file").write_text("inside")
    (root / "secret").write_text("outside")
    (root / "a/b/link").symlink_to(root / "secret")
    (root / "a/dirlink").symlink_to(root / "a/b")
    return root


def test_symlinks_beneath_a_descriptor_are_refused(tmp_path: Path, resolver: str) -> None:
    root = tree(tmp_path)
    with Dir.enter(root) as directory:
        fd = directory.open_file("a/b/file")
        assert os.read(fd, 10) == b"inside"
        os.close(fd)
        for refused in ("a/b/link", "a/dirlink/file", "a/dirlink"):
            with pytest.raises(Unsafe, match=f"{refused}: .*does not follow symlinks"):
                os.close(directory.open(refused))
        with pytest.raises(Unsafe):
            directory.sub("a/dirlink")
    assert safefs._has_openat2 is (resolver == "openat2")


def test_a_planted_name_is_never_written_through(tmp_path: Path) -> None:
    root = tree(tmp_path)
    with Dir.enter(root / "a/b") as directory:
        with pytest.raises(FileExistsError):
            directory.create("link")
        with pytest.raises(Unsafe):
            directory.open_file("link")
    assert (root / "secret").read_text() == "outside"


def test_a_link_names_the_inode_that_was_opened(tmp_path: Path) -> None:
    root = tree(tmp_path)
    with Dir.enter(root / "a/b") as source, Dir.enter(root) as target:
        fd = source.open_file("file")
        (root / "a/b/file").rename(root / "a/b/moved")  # the name changes after the open: the inode does not
        (root / "a/b/file").symlink_to(root / "secret")
        target.link_from(fd, "copy")
        os.close(fd)
    assert os.path.samefile(root / "copy", root / "a/b/moved")


def test_entering_follows_only_roots_symlinks_in_roots_directories(tmp_path: Path) -> None:
    root = tree(tmp_path)
    (root / "rootlink").symlink_to(root / "a")  # root's symlink in root's 0755 directory: followed
    with Dir.enter(root / "rootlink/b") as directory:
        assert os.fstat(directory.fd).st_ino == (root / "a/b").stat().st_ino
    nobody = pwd.getpwnam("nobody")
    theirs = root / "theirs"
    theirs.mkdir()
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    (theirs / "link").symlink_to(root / "a")  # in a directory another account can change: refused
    with pytest.raises(Unsafe, match="theirs/link"):
        Dir.enter(theirs / "link/b")

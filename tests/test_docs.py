"""The repository is self-contained: no file points outside it, and every docs/ page and section cited exists.

The facts the code relies on live in docs/ (docs/README.md), each with its upstream source. These checks keep it so:
nothing may cite notes that only exist on some machine, and a citation such as ``docs/ollama.md, "Store layout"``
must name a file in docs/ and a heading in it. Paths inside URLs (``.../blob/<commit>/docs/api.md``) are upstream
files, not ours, and are not checked.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Spelled in two parts so that this file does not match itself.
OUTSIDE = ("shared" + "/reference", ".." + "/shared")
# When the tree is not a git checkout, every file except these directories counts.
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}

_CITED = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?!\w)")
_SECTIONS = re.compile(r'(?<![\w./-])docs/([\w.-]+\.md),((?:\s+(?:and\s+)?"[^"\n]+",?)+)')
_QUOTED = re.compile(r'"([^"\n]+)"')


def repo_files() -> list[Path]:
    """The tracked files (``git ls-files``), or every file when the tree is not a git checkout."""
    try:
        listing = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            files += [Path(root, name) for name in names]
        return files
    return [REPO / name for name in listing.split("\0") if name and (REPO / name).is_file()]


def texts() -> dict[str, str]:
    """Every text file, by its path relative to the repository; binary files are left out."""
    result = {}
    for path in repo_files():
        data = path.read_bytes()
        if b"\0" not in data:
            result[path.relative_to(REPO).as_posix()] = data.decode(errors="replace")
    return result


def headings(page: str) -> set[str]:
    """A Markdown page's headings, without the ``#`` marks and backticks."""
    return {line.lstrip("#").strip().replace("`", "") for line in page.splitlines() if re.match(r"#{1,6} ", line)}


def test_nothing_points_outside_the_repository() -> None:
    found = [
        f"{name}:{number}: {line.strip()}"
        for name, text in texts().items()
        for number, line in enumerate(text.splitlines(), 1)
        if any(marker in line for marker in OUTSIDE)
    ]
    assert not found, "cite docs/ instead of files outside the repository:\n" + "\n".join(found)


def test_every_cited_docs_page_exists() -> None:
    missing = sorted(
        f"{name}: docs/{page}"
        for name, text in texts().items()
        for page in set(_CITED.findall(text))
        if not (REPO / "docs" / page).is_file()
    )
    assert not missing, "cited but not in docs/:\n" + "\n".join(missing)


def test_every_cited_section_exists() -> None:
    cited = 0
    missing = []
    for name, text in texts().items():
        for page, quoted in _SECTIONS.findall(text):
            path = REPO / "docs" / page
            if not path.is_file():
                continue  # reported by test_every_cited_docs_page_exists
            known = headings(path.read_text())
            for section in _QUOTED.findall(quoted):
                cited += 1
                if section.replace("`", "") not in known:
                    missing.append(f'{name}: docs/{page}, "{section}"')
    assert cited, "no section citations found: is the pattern still right?"
    assert not missing, "no such heading:\n" + "\n".join(sorted(missing))


def test_the_docs_index_lists_every_page() -> None:
    index = (REPO / "docs" / "README.md").read_text()
    unlisted = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.name != "README.md" and p.name not in index]
    assert not unlisted, f"docs/README.md does not list {unlisted}"

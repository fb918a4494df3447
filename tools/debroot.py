"""Debian 12 roots for the container tools, tools/e2e and tools/fresh: mmdebstrap tarballs cached by their inputs,
roots unpacked from them, and the systemd-nspawn command line that runs something in a root.

One module, so that both tools make their roots the same way (the same mirror, the same cache rule, the same nspawn
options for hosts without systemd as PID 1). Stdlib only: the tools run as root under Debian's /usr/bin/python3,
outside the venv, and import this from their own directory (a script's directory comes first on sys.path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"


class SetupFailed(Exception):
    """A root could not be made or a host command failed: nothing can be tested."""


def log(message: str) -> None:
    """A progress line prefixed with the tool's name (e2e: ..., fresh: ...)."""
    print(f"{Path(sys.argv[0]).name}: {message}", flush=True)


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command, capturing its output; on failure raise with the output's tail."""
    result = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise SetupFailed(f"{shlex.join(cmd)} exited {result.returncode}:\n{tail}")
    return result


def bootstrap_tarball(cache: Path, variant: str, include: tuple[str, ...] = (), recipe: str = "1") -> Path:
    """A `mmdebstrap --variant=VARIANT` root of SUITE (plus ``include``) as a tarball in ``cache``, built once per
    set of inputs: the key hashes the recipe (bump it when the way roots are made changes), suite, mirror, variant,
    packages, architecture and mmdebstrap's version. Tarballs of other inputs in ``cache`` are removed."""
    version = run(["dpkg-query", "-W", "-f=${Version}", "mmdebstrap"]).stdout
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    inputs = json.dumps([recipe, SUITE, MIRROR, variant, sorted(include), arch, version])
    key = hashlib.sha256(inputs.encode()).hexdigest()[:16]
    tarball = cache / f"{SUITE}-{variant}-{arch}-{key}.tar"
    if tarball.exists():
        log(f"root: cached {tarball.relative_to(REPO)}")
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"{SUITE}-*.tar"):
        stale.unlink()
    started = time.monotonic()
    partial = tarball.with_suffix(".partial.tar")
    packages = [f"--include={','.join(include)}"] if include else []
    run(["mmdebstrap", "--quiet", f"--variant={variant}", *packages, SUITE, str(partial), MIRROR], timeout=900)
    partial.rename(tarball)
    what = f"{variant}, {', '.join(include)}" if include else variant
    log(f"root: mmdebstrap {SUITE} ({what}) in {time.monotonic() - started:.0f} s")
    return tarball


def unpack_root(tarball: Path, root: Path, hostname: str) -> None:
    """A fresh root from the tarball (whatever was at ``root`` is removed first), named ``hostname``."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    run(["tar", "-C", str(root), "-xf", str(tarball)])
    (root / "etc/hostname").write_text(f"{hostname}\n")


def nspawn(root: Path, *options: str, env: Mapping[str, str]) -> list[str]:
    """The systemd-nspawn command line (without the command) for something in ``root``, not booted, on the host's
    network, its stdin, stdout and stderr passed through, and only ``env`` (and nspawn's own PATH, HOME, ...) for
    environment: nothing of the host's. --register=no and --keep-unit because the hosts that run the tools have no
    systemd as PID 1 (no machined to register with, no scope to make)."""
    cmd = ["systemd-nspawn", "--quiet", "-D", str(root), "--register=no", "--keep-unit", "--pipe", *options]
    return cmd + [f"--setenv={key}={value}" for key, value in env.items()]


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """SIGTERM/SIGHUP become SystemExit, so the tools' finally blocks stop their containers."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

"""Flood benchmark: a fifth client's Status() latency while four clients flood hxd with Status() calls.

Run with ``.venv/bin/python bench/flood.py [--seconds 10]``. Everything runs on a private session-type bus in a
temporary directory, the clients as this user (tests/test_bus_abuse.py runs the same clients as ``nobody`` on a
system-like bus and bounds the p99). The clients are hxsandbox.flood's, each a process of its own:

- idle: the probe alone for ``--seconds``: one Status() at a time, every 10 ms; its p99 is the baseline;
- flood: four clients keep 64 Status() calls in flight each (twice what one caller may have pending, so hxd
  refuses some with LimitsExceeded) for ``--seconds``, while the probe runs from the first second to two seconds
  before the end; its p99 is the figure, reported with its ratio to the idle p99;
- hxd's descriptors and RSS at idle, their peak during the flood (sampled every 0.2 s), and how long after the
  flood they take to come back (RSS: within 4 MiB of idle).

Exit status 1 when hxd did not survive the flood.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hxsandbox.flood import finish, start
from hxsandbox.world import HxdProcess, NotifySocket, PrivateBus, write_config

FLOODERS = 4
WINDOW = 64
RSS_SLACK_KIB = 4096


class Peaks:
    """hxd's highest descriptor count and RSS, sampled in a thread until stopped."""

    def __init__(self, hxd: HxdProcess) -> None:
        self.hxd = hxd
        self.descriptors = 0
        self.rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.descriptors = max(self.descriptors, self.hxd.descriptors())
            self.rss_kib = max(self.rss_kib, self.hxd.rss_kib())

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def seconds_until(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    """Seconds until ``condition()`` holds (polled every 50 ms), or ``timeout`` when it never does."""
    began = time.monotonic()
    while not condition() and time.monotonic() - began < timeout:
        time.sleep(0.05)
    return time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    seconds = str(args.seconds)
    with tempfile.TemporaryDirectory(prefix="hxd-bench-") as tmp:
        root = Path(tmp)
        with (
            PrivateBus(root) as bus,
            NotifySocket(root / "notify") as notify,
            HxdProcess(bus.address, write_config(root, "[telemetry]\nenabled = false\n"), notify) as hxd,
        ):
            hxd.start()
            hxd.wait_ready()
            idle = finish(start("probe", bus.address, "--seconds", seconds))
            idle_fds, idle_rss = hxd.descriptors(), hxd.rss_kib()

            with Peaks(hxd) as peaks:
                floods = [
                    start("flood", bus.address, "--seconds", seconds, "--window", str(WINDOW)) for _ in range(FLOODERS)
                ]
                time.sleep(1)
                probe = finish(start("probe", bus.address, "--seconds", str(args.seconds - 2)))
                outcomes = [finish(flood)["outcomes"] for flood in floods]
            assert hxd.process is not None
            if hxd.process.poll() is not None:
                print(f"hxd exited during the flood ({hxd.process.returncode}); its log:\n{hxd.log()}")
                return 1
            fds_back = seconds_until(lambda: hxd.descriptors() == idle_fds)
            rss_back = seconds_until(lambda: hxd.rss_kib() <= idle_rss + RSS_SLACK_KIB)
            hxd.stop()

    served = sum(flood.get("ok", 0) for flood in outcomes) / args.seconds
    refused = sum(flood.get("org.hxinfra.hxd1.Error.LimitsExceeded", 0) for flood in outcomes) / args.seconds
    print(
        f"idle Status         p50 {idle['p50'] * 1000:6.2f} ms  p99 {idle['p99'] * 1000:6.2f} ms  "
        f"({sum(idle['outcomes'].values())} calls)"
    )
    print(
        f"during the flood    p50 {probe['p50'] * 1000:6.2f} ms  p99 {probe['p99'] * 1000:6.2f} ms  "
        f"max {probe['max'] * 1000:.1f} ms  ({probe['outcomes']})"
    )
    print(f"flood p99 / idle p99  {probe['p99'] / idle['p99']:.1f}x")
    print(
        f"flood: {FLOODERS} clients x {WINDOW} in flight: {served:.0f} Status/s answered, {refused:.0f}/s refused "
        "with LimitsExceeded"
    )
    print(
        f"descriptors         idle {idle_fds}, peak {peaks.descriptors}, back to idle {fds_back:.1f} s after the flood"
    )
    print(
        f"RSS                 idle {idle_rss / 1024:.1f} MiB, peak {peaks.rss_kib / 1024:.1f} MiB, within 4 MiB of "
        f"idle {rss_back:.1f} s after the flood"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

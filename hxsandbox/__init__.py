"""The test harness: a throwaway world for hxd (private bus, systemd and polkit stand-ins, sample stores, a fake
NVML) shared by the tests, ``make demo``, ``make sandbox`` and the benchmarks.

It lives beside the product, not in it: the wheel and the .deb ship only ``hxd``. ``make venv`` points the
development venv at this checkout (a ``.pth`` file) so that the tests, tools and benchmarks import it.
"""

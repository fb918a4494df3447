"""GPU telemetry: NVML samples on hxd's interval timer, appended to a CSV log with nvidia-smi's column names.

The parts: ``smi`` (nvidia-smi's names, units and spelling), ``sampler`` (NVML to a Sample), ``recorder`` (the
Telemetry the daemon and ``hxctl --offline telemetry`` use: samples, the CSV log, back-off, the feature's state).
Prometheus metrics of the samples are rendered outside the core, in hxd.metrics.
"""

"""hxd's Prometheus endpoint, in one place: the text format (``exposition``), hxd's own families (``page``), the
GPUs' (``gpus``) and the HTTP server on hxd.socket (``server``).

Like hxd.bus for D-Bus, this is an adapter around the core: it reads the engine's status and telemetry's last
sample, and a scrape never starts work.
"""

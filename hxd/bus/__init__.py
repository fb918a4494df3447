"""The D-Bus adapter: exports the core on org.hxinfra.hxd1."""

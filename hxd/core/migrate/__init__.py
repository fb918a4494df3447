"""Migration of an Ollama model store to the canonical layout: plan, copy, verify, switch, post-check, rollback.

The target (the seed nodes' layout, docs/node-layout.md): ``canonical/blobs -> bulk/blobs``,
``canonical/manifests -> bulk/manifests``, the legacy path a symlink to ``canonical``, ``OLLAMA_MODELS=canonical`` in
the env file. The invariant kept at every instant, crash included: every model is readable, byte-identical, from the
old path or from the new one.
"""

"""Inventory reports what it cannot read in ``errors`` and still answers: fleet views need every node's reply."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from migrate_support import make_legacy_node, node_config

from hxd.core.inventory import inventory
from hxsandbox.world import OllamaStub


def test_a_node_without_systemctl_says_unknown_and_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = node_config(tmp_path)
    make_legacy_node(config)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    facts = inventory(config)
    assert facts["ollama_unit"] == "unknown"
    assert facts["errors"] == [
        "cannot run systemctl is-active ollama.service: systemctl is not installed (apt-get install systemd)"
    ]
    assert facts["models"] and facts["layout"]["state"] == "legacy"


def test_a_node_with_systemctl_reports_the_units_state(tmp_path: Path) -> None:
    config = node_config(tmp_path)
    make_legacy_node(config)
    assert os.access("/usr/bin/systemctl", os.X_OK), "systemctl is missing: apt-get install systemd"
    facts = inventory(config)
    assert facts["ollama_unit"] in ("active", "inactive") and facts["errors"] == []


def test_an_empty_canonical_directory_is_still_the_legacy_layout(tmp_path: Path) -> None:
    """A node before its migration often has the mount point already; only blobs or manifests there make it mixed."""
    config = node_config(tmp_path)
    make_legacy_node(config)
    config.paths.canonical.mkdir(parents=True)
    assert inventory(config)["layout"]["state"] == "legacy"
    (config.paths.canonical / "blobs").mkdir()
    assert inventory(config)["layout"]["state"] == "mixed"


def test_the_ollama_version_is_what_the_running_ollama_reports(tmp_path: Path) -> None:
    """server/routes.go (1879-1880): GET /api/version answers {"version": ...}; a node whose Ollama does not answer
    (here: nothing listens on port 9, and the unit is not active) has none, which is not an error."""
    with OllamaStub(tmp_path, tmp_path / "models", {"version": "0.32.1"}).start() as ollama:
        config = node_config(tmp_path / "up", url=ollama.url)
        make_legacy_node(config)
        assert inventory(config)["ollama_version"] == "0.32.1"
    config = node_config(tmp_path / "down")
    make_legacy_node(config)
    facts = inventory(config)
    assert facts["ollama_version"] is None and facts["ollama_unit"] == "inactive" and facts["errors"] == []

"""The validator's rules, on real files and real stores (first the seed nodes' own cases, docs/node-layout.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxd.core.config import Config, PathsConfig
from hxd.core.envfile_parser import parse_envfile
from hxd.core.validate import Finding, Options, Report, validate
from hxsandbox.samplestore import blob_path, make_node, manifest_path, sample_env, sha256_digest


@pytest.fixture
def node(tmp_path: Path) -> tuple[Config, dict[str, str]]:
    """A node in the canonical layout: bulk storage with a real store, symlinks, legacy compatibility link."""
    paths = PathsConfig(
        canonical=tmp_path / "mnt/active_llm_models",
        bulk=tmp_path / "data/bulk",
        legacy=tmp_path / "opt/production",
        env_file=tmp_path / "opt/config/ollama.env",
    )
    digests = make_node(paths.canonical, paths.bulk, paths.legacy, paths.env_file, migrated=True)
    return Config(paths=paths), digests


def run(text: str, config: Config, **options: bool) -> Report:
    return validate(parse_envfile(text.encode()), "ollama.env", config, Options(**options))


def seed(config: Config, digests: dict[str, str]) -> str:
    """llm-01's env file on a canonical node (docs/node-layout.md, "The environment file")."""
    return sample_env(config.paths.canonical, digests)


def findings(report: Report) -> list[Finding]:
    """The findings, leaving out the note every pinned model gets (HX118, tested on its own)."""
    return [f for f in report.findings if f.code != "HX118"]


def codes(report: Report) -> list[tuple[str, int]]:
    return [(f.code, f.line) for f in findings(report)]


def test_the_seed_file_on_a_canonical_node_is_clean(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    report = run(seed(config, digests), config, strict=True, store=True, deep=True)
    assert codes(report) == []


def test_trailing_comment_is_glued_into_the_value(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests).replace(
        f'OLLAMA_MODELS="{config.paths.canonical}"', f'OLLAMA_MODELS="{config.paths.canonical}"  # canonical path'
    )
    report = run(text, config)
    assert codes(report) == [("HX101", 3), ("HX121", 3)]
    assert f"OLLAMA_MODELS='{config.paths.canonical}# canonical path'" in findings(report)[0].message
    assert findings(report)[0].severity == "error"


def test_hash_inside_quotes_is_not_a_comment(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    report = run(seed(config, digests) + "OLLAMA_ORIGINS=\"a # b\"\nNOTE='x #y'\n", config)
    assert codes(report) == []


def test_comma_splitting_with_blanks_and_empties(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    pin = digests["mistral-small3.2"][:12]
    text = seed(config, digests).replace(
        f'OLLAMA_MODELS_AVAILABLE="llama3.2:3b,qwen3:1.7b,mistral-small3.2@sha256:{pin}"',
        f'OLLAMA_MODELS_AVAILABLE=" llama3.2:3b ,  qwen3:1.7b,,mistral-small3.2@sha256:{pin} ,"',
    )
    report = run(text, config)
    assert codes(report) == [("HX114", 7)]
    assert findings(report)[0].severity == "info"


def test_indented_and_mixed_case_variables(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests).replace('OLLAMA_MODEL_QWEN3="qwen3:1.7b"', '   OLLAMA_MODEL_Qwen3="qwen3:1.7b"')
    assert codes(run(text, config)) == []
    lowered = seed(config, digests).replace("OLLAMA_MODEL_QWEN3=", "ollama_model_qwen3=")
    assert codes(run(lowered, config)) == [("HX111", 7), ("HX112", 7)]  # not a model variable: names are exact


def test_inclusion_and_count_consistency(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests) + 'OLLAMA_MODEL_EXTRA="phi4:14b"\n'
    report = run(text, config)
    assert codes(report) == [("HX112", 7), ("HX110", 8)]
    assert "'phi4:14b' is not in OLLAMA_MODELS_AVAILABLE" in findings(report)[1].message
    assert "4 model variables but 3 models" in findings(report)[0].message


def test_list_entries_match_by_full_name(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests).replace('"llama3.2:3b,', '"registry.ollama.ai/library/llama3.2:3b,')
    assert codes(run(text, config)) == []
    twice = seed(config, digests).replace('"llama3.2:3b,', '"llama3.2:3b,LLAMA3.2:3b,')
    assert codes(run(twice, config)) == [("HX113", 7)]


@pytest.mark.parametrize("value", ["llama3.2", "llama3.2:latest"])
def test_unpinned_tags(node: tuple[Config, dict[str, str]], value: str) -> None:
    config, digests = node
    text = seed(config, digests).replace('"llama3.2:3b"', f'"{value}"').replace('"llama3.2:3b,', f'"{value},')
    [finding] = findings(run(text, config))
    assert (finding.code, finding.severity, finding.line, finding.key) == (
        "HX115",
        "warning",
        4,
        "OLLAMA_MODEL_LLAMA32",
    )
    assert [f.severity for f in run(text, config, strict=True).findings if f.code == "HX115"] == ["error"]


def test_invalid_model_names(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests).replace('"qwen3:1.7b"', '"qwen3:1.7b@md5:abc"')
    report = run(text, config)
    assert ("HX116", 5) in codes(report)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("export OLLAMA_DEBUG=1\n", [("HX103", 8)]),
        ("1BAD=1\n", [("HX104", 8)]),
        ("OLLAMA_KEEP_ALIVE=5m\nOLLAMA_KEEP_ALIVE=10m\n", [("HX106", 8), ("HX106", 9)]),
        ("# a comment \\\nOLLAMA_DEBUG=1\n", [("HX107", 9)]),
        ("JUSTTEXT\n", [("HX108", 8)]),
        ('OLLAMA_ORIGINS="a"b\n', [("HX102", 8)]),
        ('OLLAMA_ORIGINS="never closed\n', [("HX105", 8)]),
    ],
)
def test_what_systemd_drops_or_changes(
    node: tuple[Config, dict[str, str]], extra: str, expected: list[tuple[str, int]]
) -> None:
    config, digests = node
    assert codes(run(seed(config, digests) + extra, config)) == expected


def test_duplicates_name_both_lines(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    report = run(seed(config, digests) + "OLLAMA_KEEP_ALIVE=5m\nOLLAMA_KEEP_ALIVE=10m\n", config)
    first, second = [f for f in report.findings if f.code == "HX106"]
    assert "set again on line 9" in first.message and "'5m'" in first.message
    assert "also set on line 8" in second.message and "'10m'" in second.message


def test_a_file_systemd_rejects_gets_only_hx100(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    report = run(seed(config, digests) + "BAD=\x00\n", config)
    assert codes(report) == [("HX100", 0)] and not report.loads
    assert "NUL byte" in findings(report)[0].message


def test_models_dir_checks(node: tuple[Config, dict[str, str]], tmp_path: Path) -> None:
    config, digests = node
    unset = "\n".join(line for line in seed(config, digests).splitlines() if not line.startswith("OLLAMA_MODELS="))
    assert codes(run(unset, config)) == [("HX120", 0)]
    elsewhere = seed(config, digests).replace(str(config.paths.canonical), "/opt/elsewhere")
    assert codes(run(elsewhere, config)) == [("HX121", 3)]
    (config.paths.canonical / "blobs").unlink()
    (config.paths.canonical / "blobs").mkdir()
    config.paths.legacy.unlink()
    config.paths.legacy.mkdir()
    assert codes(run(seed(config, digests), config)) == [("HX123", 3), ("HX124", 3)]
    missing = Config(paths=PathsConfig(canonical=tmp_path / "nowhere"))
    assert codes(
        run(seed(config, digests).replace(str(config.paths.canonical), str(tmp_path / "nowhere")), missing)
    ) == [("HX122", 3)]


def test_store_checks(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    bulk = config.paths.bulk
    text = seed(config, digests)
    manifest_path(bulk, "qwen3:1.7b").unlink()
    weights = blob_path(bulk, sha256_digest(b"llama3.2 3b weights"))
    weights.write_bytes(b"llama3.2 3b weightz")  # same size, other content
    assert codes(run(text, config, store=True)) == [("HX130", 5)]
    assert codes(run(text, config, deep=True)) == [("HX135", 4), ("HX130", 5)]
    weights.write_bytes(b"short")
    assert codes(run(text, config, store=True)) == [("HX133", 4), ("HX130", 5)]
    weights.unlink()
    assert codes(run(text, config, store=True)) == [("HX132", 4), ("HX130", 5)]


def test_pin_mismatch_against_the_store(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    text = seed(config, digests).replace(digests["mistral-small3.2"][:12], "000000000000")
    assert codes(run(text, config)) == []
    report = run(text, config, store=True)
    assert codes(report) == [("HX134", 6)]
    assert f"the store has sha256:{digests['mistral-small3.2'][:12]}" in findings(report)[0].message


def test_a_pin_is_noted_with_the_name_to_send(node: tuple[Config, dict[str, str]]) -> None:
    config, digests = node
    [note] = [f for f in run(seed(config, digests), config).findings if f.code == "HX118"]
    assert (note.severity, note.line, note.key) == ("info", 6, "OLLAMA_MODEL_MISTRAL")
    assert "Ollama's API rejects (400 invalid model name)" in note.message
    assert note.hint == "scripts that call Ollama directly must send 'mistral-small3.2:latest'"

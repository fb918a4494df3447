"""Where hxd used to read the store, the names or the environment differently from Ollama (issue 16).

Each test cites the file and function of Ollama's source (commit fb30760, v0.33.0-rc2) it follows; docs/ollama.md,
"Where hxd follows Ollama's code", says the same in prose. Each also runs the same input through the Ollama stub
(tools/ollama_stub.py), which follows that source, so that hxd and the stub cannot drift apart.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import pytest

from hxd.core.config import Config, OllamaConfig
from hxd.core.envfile_parser import parse_envfile
from hxd.core.inventory import inventory
from hxd.core.migrate.plan import targets
from hxd.core.modelref import BadReference, parse_ref
from hxd.core.ollama_api import OllamaUnavailable, keep_alive_value, version
from hxd.core.ollama_env import api_url, env_api_url, host_url, keep_alive_sec, num_parallel, ollama_var
from hxd.core.store import Store
from hxd.core.validate import Options, validate
from hxsandbox.samplestore import make_node, sample_env
from hxsandbox.world import OllamaStub

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stub() -> ModuleType:
    """tools/ollama_stub.py as a module, to call its parsers directly."""
    spec = importlib.util.spec_from_file_location("ollama_stub", REPO / "tools/ollama_stub.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ollama_stub"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def node(tmp_path: Path) -> tuple[Config, dict[str, str]]:
    config = Config.model_validate(
        {
            "paths": {
                "canonical": str(tmp_path / "canonical"),
                "bulk": str(tmp_path / "bulk"),
                "legacy": str(tmp_path / "legacy"),
                "env_file": str(tmp_path / "ollama.env"),
            }
        }
    )
    paths = config.paths
    return config, make_node(paths.canonical, paths.bulk, paths.legacy, paths.env_file, migrated=True)


def test_a_dangling_manifest_symlink_fails_the_listing(stub: ModuleType, node: tuple[Config, dict[str, str]]) -> None:
    """manifest/manifest.go: Manifests, lines 188-192: ``os.Stat`` of any glob match returns its error, even with
    continueOnError; server/model_list_cache.go: List (145-150) passes it on, so /api/tags answers 500 and
    GenerateHandler's getExistingName fails (server/routes.go, 277-281: 404)."""
    config, digests = node
    dangling = config.paths.bulk / "manifests/registry.ollama.ai/library/gone/latest"
    dangling.parent.mkdir(parents=True)
    dangling.symlink_to(config.paths.bulk / "nowhere")
    assert [path for path, _ in Store(config.paths.canonical).unlistable()] == [
        config.paths.canonical / "manifests/registry.ollama.ai/library/gone/latest"
    ]
    text = sample_env(config.paths.canonical, digests)
    report = validate(parse_envfile(text.encode()), "ollama.env", config, Options(store=True))
    [finding] = [f for f in report.findings if f.code == "HX136"]
    assert finding.severity == "error" and finding.key == "OLLAMA_MODELS"
    assert "/api/tags answers 500 and every generate 404" in finding.message
    with pytest.raises(stub.StoreError, match=r"stat .*gone/latest"):
        stub.Store(str(config.paths.canonical)).manifests(True)


NAMES = [
    # (request name, host/namespace/model:tag or None when invalid, source)
    ("gpt-oss:20b:cloud", "registry.ollama.ai/library/gpt-oss:20b", "cloud"),
    ("gpt-oss:20b-cloud", "registry.ollama.ai/library/gpt-oss:20b", "cloud"),
    ("gpt-oss:cloud", "registry.ollama.ai/library/gpt-oss:latest", "cloud"),
    ("llama3:local", "registry.ollama.ai/library/llama3:latest", "local"),
    ("llama3:8b:LOCAL", "registry.ollama.ai/library/llama3:8b", "local"),
    ("llama3-cloud", "registry.ollama.ai/library/llama3-cloud:latest", ""),
    ("llama3:8b:local:cloud", None, ""),
    ("llama3:8b-cloud:local", None, ""),
    ("localhost:5000/ns/m:cloud", "localhost:5000/ns/m:latest", "cloud"),
]


@pytest.mark.parametrize(("text", "full_name", "source"), NAMES)
def test_source_suffixes(stub: ModuleType, text: str, full_name: str | None, source: str) -> None:
    """internal/modelref/modelref.go: ParseRef (28-48) and parseSourceSuffix (99-118): ``:cloud``, ``:local`` or a
    tag ending ``-cloud`` (only after a ``:``) is stripped and picks the source; two suffixes are an error;
    server/model_resolver.go: parseAndValidateModelRef (36-55) then parses the rest as a name."""
    if full_name is None:
        with pytest.raises(BadReference, match="either :local or :cloud"):
            parse_ref(text)
        with pytest.raises(stub.RefError):
            stub.parse_model_ref(text)
        return
    ref = parse_ref(text)
    assert (ref.full_name, ref.source) == (full_name, source)
    theirs = stub.parse_model_ref(text)
    assert (str(theirs.name), theirs.source) == (full_name, source)
    assert stub.parse_model_ref(ref.api_name).source == source  # what hxd sends keeps the request's source


def test_a_stored_cloud_tag_is_just_a_tag() -> None:
    """modelref.go: toLegacyCloudPullName (82-88): a pulled cloud model is stored under the tag ``<tag>-cloud``;
    names read back from the store or /api/tags are file paths (manifest.go: Manifests), not request names."""
    ref = parse_ref("gpt-oss:20b-cloud", stored=True)
    assert (ref.tag, ref.source) == ("20b-cloud", "")


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("http://llama3", False),
        ("https://hf.co/user/repo:q4", True),
        ("http://registry.ollama.ai/library/llama3:8b", True),
        ("ns/http://m", False),
    ],
)
def test_a_scheme_is_cut_from_the_host_only(stub: ModuleType, text: str, valid: bool) -> None:
    """types/model/name.go: ParseNameBare (146-176): ``scheme://`` is cut from what is left for the host after the
    model and the namespace are split off (167-173), nowhere else; ``http://llama3`` leaves the namespace empty."""
    if valid:
        assert parse_ref(text).host == stub.parse_model_ref(text).name.host
        assert "://" not in parse_ref(text).host
    else:
        with pytest.raises(BadReference):
            parse_ref(text)
        with pytest.raises(stub.RefError):
            stub.parse_model_ref(text)


@pytest.mark.parametrize("separator", [":", "-"])
def test_upper_case_and_dash_digests_are_accepted(stub: ModuleType, tmp_path: Path, separator: str) -> None:
    """manifest/paths.go: BlobsPath (40-47) accepts ``^sha256[:-][0-9a-fA-F]{64}$`` and maps ``:`` to ``-``, case
    kept; hxd reads such a layer, finds its blob under that name and compares the content hash case-blind."""
    data = b"weights"
    hex_upper = hashlib.sha256(data).hexdigest().upper()
    digest = f"sha256{separator}{hex_upper}"
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"sha256-{hex_upper}").write_bytes(data)
    manifest = tmp_path / "manifests/registry.ollama.ai/library/m/latest"
    manifest.parent.mkdir(parents=True)
    layer = f'{{"mediaType":"application/vnd.ollama.image.model","digest":"{digest}","size":{len(data)}}}'
    manifest.write_text(f'{{"schemaVersion":2,"config":{layer},"layers":[{layer}]}}')
    store = Store(tmp_path)
    [config_layer, _] = store.read_manifest(manifest).layers
    assert store.blob_problem(config_layer, deep=True) is None
    assert stub.Store(str(tmp_path)).blob_path(digest) == str(tmp_path / "blobs" / f"sha256-{hex_upper}")
    with pytest.raises(stub.GoError):
        stub.Store(str(tmp_path)).blob_path(f"sha512:{hex_upper}")


@pytest.mark.parametrize("value", ["/canon ", " /canon", "'/canon'", '"/canon"', "/canon"])
def test_ollama_models_as_ollama_reads_it(stub: ModuleType, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """envconfig/config.go: Var (374-377) trims spaces, then quotes; Models (113-124) uses that reading."""
    monkeypatch.setenv("OLLAMA_MODELS", value)
    assert ollama_var(value) == stub.env_var("OLLAMA_MODELS") == "/canon"


def test_a_trimmed_ollama_models_is_the_canonical_path(node: tuple[Config, dict[str, str]]) -> None:
    """envconfig Var (374-377): systemd passes ``/canon `` and Ollama uses ``/canon``; validation, inventory and the
    migration's source follow Ollama, and HX125 reports the difference instead of a false HX121."""
    config, digests = node
    canonical = str(config.paths.canonical)
    text = sample_env(config.paths.canonical, digests).replace(f'"{canonical}"', f'"{canonical} "')
    config.paths.env_file.write_text(text)
    report = validate(parse_envfile(text.encode()), "ollama.env", config, Options(store=True))
    assert [f.code for f in report.findings if f.code != "HX118"] == ["HX125"]
    assert targets(config, {}).source == config.paths.canonical
    assert len(inventory(config)["models"]) == len(digests)


@pytest.mark.parametrize(
    "value",
    [None, "0.0.0.0", "0.0.0.0:8080", "example.com", "https://example.com", "http://h:1/ollama", "[::1]:9", "h:99999"],
)
def test_the_api_address_follows_ollama_host(stub: ModuleType, value: str | None) -> None:
    """envconfig/config.go: Host (20-60) and ConnectableHost (66-80): scheme, host, port and path; hxd connects
    where the stub (which follows Host) listens, an unspecified bind address read as loopback."""
    url = urlsplit(host_url(value))
    host, port = stub.parse_ollama_host(value or "")
    assert url.port == port
    assert url.hostname == ("127.0.0.1" if host == "0.0.0.0" else host)


def test_ollama_url_against_ollama_host(node: tuple[Config, dict[str, str]]) -> None:
    """envconfig Host (20-60): without ``ollama.url`` hxd derives the address from OLLAMA_HOST; with it, a
    different address is HX126; a path in the URL stays in every request."""
    config, digests = node
    text = sample_env(config.paths.canonical, digests).replace("127.0.0.1:11434", "http://10.0.0.5:8080/ollama")
    env = parse_envfile(text.encode())
    assert api_url(config, env.environment) == "http://10.0.0.5:8080/ollama"
    configured = config.model_copy(update={"ollama": OllamaConfig(url="http://127.0.0.1:11434")})
    assert api_url(configured, env.environment) == "http://127.0.0.1:11434"
    [finding] = [f for f in validate(env, "ollama.env", configured).findings if f.code == "HX126"]
    assert (finding.line, finding.key) == (2, "OLLAMA_HOST")
    assert "Ollama listens on 'http://10.0.0.5:8080/ollama'" in finding.message
    assert not [f for f in validate(env, "ollama.env", config).findings if f.code == "HX126"]


KEEP_ALIVE = ["", "0", "5m", "1h30m", "1.5s", "300ms", "3600", "+90", "-1", "-5m", " '10s' ", "bogus", "10x", "1e3"]


@pytest.mark.parametrize("value", KEEP_ALIVE)
def test_ollama_keep_alive_as_ollama_reads_it(stub: ModuleType, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """envconfig/config.go: KeepAlive (126-144): a Go duration (time.ParseDuration), else whole seconds
    (strconv.ParseInt), else 5 minutes; negative is for ever. hxd's reading (seconds) and the stub's (ns) agree."""
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", value)
    theirs = stub.env_keep_alive_ns()
    assert keep_alive_sec(value) == (math.inf if theirs == stub.FOREVER_NS else theirs / 1e9)


@pytest.mark.parametrize("seconds", [300.0, 0.0, 1.5, math.inf])
def test_keep_alive_on_the_wire(stub: ModuleType, seconds: float) -> None:
    """api/types.go: Duration.UnmarshalJSON (1243-1269): a JSON number is seconds, a negative one for ever; the
    stub decodes what hxd sends to the duration hxd meant."""
    decoded = stub._keep_alive_field(keep_alive_value(seconds))
    assert decoded == (stub.FOREVER_NS if math.isinf(seconds) else int(seconds * 1e9))


@pytest.mark.parametrize("value", ["", "4", " 2 ", "'8'", "0", "-1", "+2", "x", "\u0663"])
def test_ollama_num_parallel_as_ollama_reads_it(stub: ModuleType, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """envconfig/config.go: NumParallel (275) is Uint("OLLAMA_NUM_PARALLEL", 1) (259-271: strconv.ParseUint, else
    the default); server/sched.go: load (497) uses at least 1. The stub takes the same value as its default."""
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", value)
    assert num_parallel(value) == stub._env_defaults().max_parallel


def test_a_path_in_the_address_stays_in_every_request(tmp_path: Path) -> None:
    """api/client.go: ClientFromEnvironment (74-76) takes envconfig.Host() with its path, and every request joins
    its route to it (``c.base.JoinPath(path)``, 116 and 181): ``OLLAMA_HOST=http://h:1/ollama`` is for a proxy
    that serves Ollama under /ollama. The server itself routes /api/... only, so Ollama (the stub) answers 404
    there and logs the path hxd asked for."""
    env = tmp_path / "ollama.env"
    with OllamaStub(tmp_path, tmp_path / "models").start() as ollama:
        env.write_text(f'OLLAMA_HOST="{ollama.url}/ollama"\n')
        config = Config.model_validate({"paths": {"env_file": str(env)}})
        url = env_api_url(config, env)
        assert url == f"{ollama.url}/ollama"
        with pytest.raises(OllamaUnavailable, match="HTTP 404"):
            version(url)
        assert version(ollama.url) == "0.33.0-rc2"
        ollama.stop()
    log = ollama.stderr.read_text()
    assert "| 404 |" in log and '"/ollama/api/version"' in log
    missing = Config.model_validate({"paths": {"env_file": str(tmp_path / "none.env")}})
    assert env_api_url(missing, tmp_path / "none.env") == "http://127.0.0.1:11434"  # Host() with OLLAMA_HOST unset


@pytest.mark.parametrize(
    ("value", "url"),
    [
        (None, "http://127.0.0.1:11434"),  # 23, 29, 42: scheme http, host 127.0.0.1, port 11434
        ("example.com", "http://example.com:11434"),  # 28-29, 45-46: a bare host keeps the default port
        ("http://example.com", "http://example.com:80"),  # 33-34: http:// without a port is 80
        ("https://example.com", "https://example.com:443"),  # 35-36: https:// without a port is 443
        ("ollama.com", "https://ollama.com:443"),  # 30-31
        ("http://10.0.0.5:8080/ollama", "http://10.0.0.5:8080/ollama"),  # 39, 58: the path is kept
        ("example.com:99999", "http://example.com:11434"),  # 50-53: an invalid port is the default
        ("0.0.0.0:8080", "http://127.0.0.1:8080"),  # ConnectableHost, 66-80
        ("[::]:9", "http://[::1]:9"),
    ],
)
def test_each_rule_of_host(value: str | None, url: str) -> None:
    """envconfig/config.go: Host (lines 20-60) and ConnectableHost (66-80), one rule per case (the line in the
    comment)."""
    assert host_url(value) == url

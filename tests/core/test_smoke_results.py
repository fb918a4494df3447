"""What a smoke run records: the readable line, the JSON line, the LastSmoke summary, and reading it back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hxd.core.config import Config
from hxd.core.errors import Failed
from hxd.core.smoke import ConcurrencyResult, ModelResult, SmokeRun, configured_models, last_smoke, perf_dir
from hxsandbox.samplestore import sample_env

NIGHT = datetime(2026, 11, 28, 0, 11, 42, tzinfo=UTC)


def make_run(when: datetime = NIGHT, concurrency: bool = True) -> SmokeRun:
    models = [
        ModelResult("llama3.2:3b", "llama3.2:3b", first_token_sec=1.64, load_sec=0.01, total_sec=2.1,
                    tokens_per_sec=85.25, eval_count=32, warmup_sec=3.2, baseline_sec=1.6, keep_alive_sent=[300, 300],
                    keep_alive_why="OLLAMA_KEEP_ALIVE=0 (0 s) would unload the model ..."),
        ModelResult("qwen3:1.7b", "qwen3:1.7b", first_token_sec=2.98, baseline_sec=1.98, regression=True),
        ModelResult("mistral-small3.2@sha256:5a408ab55df5", "mistral-small3.2:latest", "not_found",
                    "HTTP 404: model 'mistral-small3.2:latest' not found; pull the model or correct its name"),
    ]  # fmt: skip
    check = (
        ConcurrencyResult("llama3.2:3b", 4, 3, 1.7, 2.1, 2.9, {"busy": 1}, "HTTP 503: server busy", "queued", 1, 1,
                          1.1, "OLLAMA_NUM_PARALLEL=1: Ollama served 1 at a time and queued the rest", 0)
        if concurrency
        else None
    )  # fmt: skip
    return SmokeRun(when, "llm-01", "http://127.0.0.1:11434", "0.33.0-rc2", 41.2, models, check)


def test_readable_lines() -> None:
    assert make_run().log_lines() == [
        "2026-11-28T00:11:42Z llm-01 llama3.2:3b ok first_token=1.640s median7=1.600s load=0.010s total=2.100s "
        "warmup=3.200s tokens_per_sec=85.2 keep_alive=300/300 ollama=0.33.0-rc2",
        "2026-11-28T00:11:42Z llm-01 qwen3:1.7b REGRESSION first_token=2.980s median7=1.980s ollama=0.33.0-rc2",
        "2026-11-28T00:11:42Z llm-01 mistral-small3.2:latest FAILED not_found: HTTP 404: model "
        "'mistral-small3.2:latest' not found; pull the model or correct its name ollama=0.33.0-rc2",
        "2026-11-28T00:11:42Z llm-01 concurrency 4x llama3.2:3b 3/4 FAILED queued (1 at once, OLLAMA_NUM_PARALLEL=1) "
        "first_token_p50=1.700s first_token_p95=2.100s wall=2.900s; first failure: HTTP 503: server busy",
    ]
    assert (
        make_run(concurrency=False).log_lines()[-1]
        == "2026-11-28T00:11:42Z llm-01 concurrency skipped: no model passed"
    )


def test_json_lines_and_run_json_agree() -> None:
    run = make_run()
    records = run.records()
    assert [r["check"] for r in records] == ["model", "model", "model", "concurrency"]
    assert all(r["time"] == "2026-11-28T00:11:42Z" and r["node"] == "llm-01" for r in records)
    assert all(r["ollama_version"] == "0.33.0-rc2" == run.to_json()["ollama_version"] for r in records)
    stamp = ("time", "node", "check", "ollama_version")
    assert {k: v for k, v in records[2].items() if k not in stamp} == run.to_json()["models"][2]
    assert records[0]["keep_alive_sent"] == [300, 300] and records[0]["keep_alive_why"].startswith("OLLAMA_KEEP")
    assert (records[3]["served"], records[3]["at_once"], records[3]["keep_alive_sent"]) == ("queued", 1, 0)
    assert records[2]["model"] == "mistral-small3.2@sha256:5a408ab55df5" and records[2]["ok"] is False
    assert json.loads(json.dumps(run.to_json()))["ok"] is False
    assert run.describe() == "3 models: 2 ok, 1 failed, 1 regressed; concurrency 3/4 queued"


def test_summary_leaves_out_what_was_not_measured() -> None:
    assert make_run().summary() == {
        "time": "2026-11-28T00:11:42Z",
        "ok": False,
        "models": {
            "llama3.2:3b": {"ok": True, "first_token_sec": 1.64, "regression": False, "reason": ""},
            "qwen3:1.7b": {"ok": True, "first_token_sec": 2.98, "regression": True, "reason": ""},
            "mistral-small3.2@sha256:5a408ab55df5": {
                "ok": False,
                "regression": False,
                "reason": "HTTP 404: model 'mistral-small3.2:latest' not found; pull the model or correct its name",
            },
        },
        "concurrency": {"name": "llama3.2:3b", "requests": 4, "successes": 3, "p50_sec": 1.7, "p95_sec": 2.1},
    }


def test_last_smoke_reads_the_newest_run(tmp_path: Path) -> None:
    config = Config.model_validate({"paths": {"log_dir": str(tmp_path)}})
    assert last_smoke(config) == {}
    jsonl = perf_dir(config) / "nightly-smoke.jsonl"
    jsonl.parent.mkdir(parents=True)
    older = make_run(datetime(2026, 11, 27, 0, 9, tzinfo=UTC))
    newer = make_run(concurrency=False)
    lines = [json.dumps(r) for run in (older, newer) for r in run.records()]
    jsonl.write_text("\n".join(lines) + "\nnot json\n")
    assert last_smoke(config) == newer.summary()
    assert "concurrency" not in last_smoke(config)


def test_models_come_from_the_env_file_or_the_config(tmp_path: Path) -> None:
    env = tmp_path / "ollama.env"
    env.write_text(sample_env(tmp_path / "models", {"mistral-small3.2": "5a408ab55df5" + "0" * 52}))
    config = Config.model_validate({"paths": {"env_file": str(env)}})
    assert configured_models(config) == ["llama3.2:3b", "qwen3:1.7b", "mistral-small3.2@sha256:5a408ab55df5"]
    chosen = Config.model_validate({"paths": {"env_file": str(env)}, "smoke": {"models": ["qwen3:1.7b"]}})
    assert configured_models(chosen) == ["qwen3:1.7b"]
    env.write_text('OLLAMA_MODELS="/mnt/active_llm_models"\n')
    with pytest.raises(Failed, match=r"ollama.env: no models to test: it sets no OLLAMA_MODEL_<NAME> variable; fix"):
        configured_models(config)
    env.write_bytes(b"OLLAMA_MODEL_X=llama3.2:3b\x00\n")
    with pytest.raises(Failed, match=r"no models to test: systemd rejects it \("):
        configured_models(config)

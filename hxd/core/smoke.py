"""Nightly smoke tests against Ollama: first-token latency per model, a concurrency check, regressions.

The seed nodes' operators measured first-token latency by hand (llama3.2:3b 1.64 s, qwen3:1.7b 1.98 s,
mistral-small3.2 5.44 s; docs/node-layout.md) and ran "4 concurrent requests" once; hxd does it every night and
keeps the numbers. For each model: Ollama's load request first, so the number measures the model and not the disk,
then a short fixed prompt with ``num_predict`` and temperature 0 (the same tokens every night, so tokens/s compare),
timed to the first chunk with text (docs/ollama.md, "POST /api/generate"). Then ``concurrency`` requests at once to
the first model that passed, with a verdict: served in parallel, or queued inside Ollama (OLLAMA_NUM_PARALLEL).
A failed request is a result with a reason; only cancellation ends a run early, and then nothing is written.

keep_alive: every request says how long Ollama keeps the model loaded after it. With the env file's
``OLLAMA_KEEP_ALIVE=0`` Ollama would unload the model after the warm-up and count its load time as first-token
latency, so a request after which the run uses the model again sends at least ``smoke.keep_alive_sec``; the last
request to each model sends ``OLLAMA_KEEP_ALIVE`` as Ollama reads it, so the node ends the run as configured. Each
result records what was sent and why (docs/ollama.md, "Where hxd follows Ollama's code").

Results go to ``<log_dir>/perf/nightly-smoke.log`` (a line per model per run, for people) and ``nightly-smoke.jsonl``
(an object per model per run, for machines and for the regression check: first-token latency above the median of
the model's last 7 good runs by more than ``smoke.regression_margin``).

Blocking (HTTP, threads, fsync): the daemon calls ``run_smoke`` in a worker thread with a JobControl.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from hxd.core.config import Config
from hxd.core.envfile_reader import read_envfile
from hxd.core.errors import Failed, Unreadable
from hxd.core.jobs import JobControl
from hxd.core.logfile import append_lines
from hxd.core.modelref import BadReference, ModelRef, parse_ref
from hxd.core.ollama_api import Generation, OllamaUnavailable, generate, keep_alive_value, version
from hxd.core.ollama_env import api_url, keep_alive_sec, num_parallel
from hxd.core.schedule import iso
from hxd.core.validate import MODEL_VARIABLE

LOG_NAME = "nightly-smoke.log"
JSONL_NAME = "nightly-smoke.jsonl"
BASELINE_RUNS = 7  # the regression baseline: median first-token latency of this many good runs of a model
MIN_BASELINE_RUNS = 3  # fewer good runs than this and there is no baseline yet: one odd night is not a norm


@dataclass(frozen=True)
class ModelResult:
    """One model in one run. ``model`` is the name as configured (maybe pinned), ``name`` the one sent to Ollama
    (empty when the configured text is no model name). Times are seconds; None where not measured."""

    model: str
    name: str
    failure: str = ""
    reason: str = ""
    first_token_sec: float | None = None
    load_sec: float | None = None
    total_sec: float | None = None
    tokens_per_sec: float | None = None
    eval_count: int = 0
    warmup_sec: float | None = None
    baseline_sec: float | None = None
    regression: bool = False
    keep_alive_sent: list[int | float] = field(default_factory=list)  # per request, as sent (seconds; -1: forever)
    keep_alive_why: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "name": self.name, "ok": self.ok, **asdict(self)}


@dataclass(frozen=True)
class ConcurrencyResult:
    """``requests`` requests to ``name`` at once: how many succeeded, and their first-token latency percentiles
    (nearest rank, over the successes). ``failures`` counts failure codes; ``reason`` is the first failure's."""

    name: str
    requests: int
    successes: int
    p50_sec: float | None
    p95_sec: float | None
    wall_sec: float
    failures: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    served: str = ""  # "parallel", "queued", or "" with fewer than two successes
    at_once: int = 0  # successes whose first token came with the fastest one's (see served_at_once)
    num_parallel: int = 1  # OLLAMA_NUM_PARALLEL as Ollama reads it
    spread_sec: float | None = None  # last first token minus the first
    served_why: str = ""
    keep_alive_sent: int | float | None = None

    @property
    def ok(self) -> bool:
        """Every request succeeded; queueing is reported, not failed (it is Ollama's default)."""
        return self.successes == self.requests

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, **asdict(self)}


@dataclass(frozen=True)
class SmokeRun:
    """One run: what ``hxctl smoke --json`` prints (``to_json``) and what the logs get (``records``, ``log_lines``)."""

    time: datetime
    node: str
    url: str
    ollama_version: str | None  # GET /api/version; None when it did not answer
    duration_sec: float
    models: list[ModelResult]
    concurrency: ConcurrencyResult | None  # None when no model passed, so there was nothing to load in parallel

    @property
    def ok(self) -> bool:
        """Every model answered without a regression, and every parallel request succeeded."""
        return all(m.ok and not m.regression for m in self.models) and (
            self.concurrency is not None and self.concurrency.ok
        )

    def describe(self) -> str:
        """One line for the job's message, e.g. ``3 models: 2 ok, 1 failed, 1 regressed; concurrency 4/4``."""
        failed = sum(not m.ok for m in self.models)
        regressions = sum(m.regression for m in self.models)
        c = self.concurrency
        return (
            f"{len(self.models)} models: {len(self.models) - failed} ok, {failed} failed, {regressions} regressed; "
            + (
                f"concurrency {c.successes}/{c.requests}" + (f" {c.served}" if c.served else "")
                if c
                else "concurrency skipped"
            )
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "time": iso(self.time),
            "node": self.node,
            "url": self.url,
            "ollama_version": self.ollama_version,
            "duration_sec": self.duration_sec,
            "ok": self.ok,
            "models": [m.to_json() for m in self.models],
            "concurrency": self.concurrency.to_json() if self.concurrency else None,
        }

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines: one object per model (``check: model``) and one for the concurrency check."""
        stamp = {"time": iso(self.time), "node": self.node, "ollama_version": self.ollama_version}
        records = [{**stamp, "check": "model", **m.to_json()} for m in self.models]
        if self.concurrency is not None:
            records.append({**stamp, "check": "concurrency", **self.concurrency.to_json()})
        return records

    def log_lines(self) -> list[str]:
        """The readable lines: one per model, then the concurrency check."""
        stamp = f"{iso(self.time)} {self.node}"
        ollama = f" ollama={self.ollama_version}" if self.ollama_version else ""
        lines = [f"{stamp} {_model_line(m)}{ollama}" for m in self.models]
        c = self.concurrency
        if c is None:
            lines.append(f"{stamp} concurrency skipped: no model passed")
        else:
            pairs = _pairs(first_token_p50=c.p50_sec, first_token_p95=c.p95_sec, wall=c.wall_sec)
            verdict = "ok" if c.ok else "FAILED"
            served = f" {c.served} ({c.at_once} at once, OLLAMA_NUM_PARALLEL={c.num_parallel})" if c.served else ""
            outcome = f"{c.successes}/{c.requests} {verdict}{served} {pairs}" + (
                f"; first failure: {c.reason}" if c.reason else ""
            )
            lines.append(f"{stamp} concurrency {c.requests}x {c.name} {outcome}")
        return lines

    def summary(self) -> dict[str, Any]:
        """The ``LastSmoke`` structure for this run; see ``summarize``."""
        return summarize(self.records())


def _model_line(m: ModelResult) -> str:
    label = m.name or m.model
    if not m.ok:
        return f"{label} FAILED {m.failure}: {m.reason}"
    return (
        f"{label} {'REGRESSION' if m.regression else 'ok'} "
        + _pairs(
            first_token=m.first_token_sec,
            median7=m.baseline_sec,
            load=m.load_sec,
            total=m.total_sec,
            warmup=m.warmup_sec,
            tokens_per_sec=m.tokens_per_sec,
        )
        + (f" keep_alive={'/'.join(map(str, m.keep_alive_sent))}" if m.keep_alive_sent else "")
    )


def _pairs(**values: float | None) -> str:
    """``key=value`` pairs, seconds as ``1.640s``, rates as ``85.3``; unmeasured values left out."""
    return " ".join(
        f"{key}={value:.1f}" if key == "tokens_per_sec" else f"{key}={value:.3f}s"
        for key, value in values.items()
        if value is not None
    )


def perf_dir(config: Config) -> Path:
    return config.paths.log_dir / "perf"


def configured_models(config: Config) -> list[str]:
    """``smoke.models`` when set, else the values of the OLLAMA_MODEL_* variables of the env file, in file order
    (as systemd reads it). Raises Unreadable, or Failed when there is no model to test."""
    if config.smoke.models:
        return list(config.smoke.models)
    path = config.paths.env_file
    env = read_envfile(path)
    found = [value for key, value in env.environment.items() if MODEL_VARIABLE.fullmatch(key)]
    if not found:
        why = f"systemd rejects it ({env.error})" if not env.loads else "it sets no OLLAMA_MODEL_<NAME> variable"
        raise Failed(f"{path}: no models to test: {why}; fix it, or list the models in smoke.models")
    return found


@dataclass(frozen=True)
class OllamaSide:
    """The node's Ollama as the env file makes it behave (each value as Ollama reads it): where it listens, how long
    it keeps a model loaded (OLLAMA_KEEP_ALIVE, seconds, ``math.inf`` for ever) and how many requests one loaded
    model serves at once (OLLAMA_NUM_PARALLEL). ``hold_sec`` is the keep_alive of a request after which the run uses
    the model again: OLLAMA_KEEP_ALIVE, or ``smoke.keep_alive_sec`` where that is longer."""

    url: str
    keep_alive_sec: float
    keep_alive_text: str  # what the env file says, for the notes ("" when unset)
    num_parallel: int
    hold_sec: float

    @classmethod
    def of(cls, config: Config) -> OllamaSide:
        try:
            environment = read_envfile(config.paths.env_file).environment
        except Unreadable:
            environment = {}  # Ollama's defaults; configured_models and validation say what is wrong with the file
        keep = keep_alive_sec(environment.get("OLLAMA_KEEP_ALIVE"))
        return cls(
            url=api_url(config, environment),
            keep_alive_sec=keep,
            keep_alive_text=environment.get("OLLAMA_KEEP_ALIVE", ""),
            num_parallel=num_parallel(environment.get("OLLAMA_NUM_PARALLEL")),
            hold_sec=max(keep, float(config.smoke.keep_alive_sec)),
        )

    @property
    def why(self) -> str:
        """Why the requests sent the keep_alive they sent, for the results."""
        setting = f"OLLAMA_KEEP_ALIVE={self.keep_alive_text}" if self.keep_alive_text else "OLLAMA_KEEP_ALIVE unset"
        configured = _seconds_text(self.keep_alive_sec)
        if self.hold_sec == self.keep_alive_sec:
            return f"{setting} ({configured}) sent with every request, as Ollama applies it"
        return (
            f"{setting} ({configured}) would unload the model before the run's next request to it, which would then "
            f"count the load time as first-token latency; it was held {_seconds_text(self.hold_sec)} "
            f"(smoke.keep_alive_sec) until its last request, which sent {configured} so Ollama ends as configured"
        )


def _seconds_text(seconds: float) -> str:
    return "for ever" if math.isinf(seconds) else f"{seconds:g} s"


def run_smoke(config: Config, models: list[ModelRef] | None, control: JobControl, now: datetime) -> SmokeRun:
    """Test ``models`` (default: ``configured_models``), check concurrency, flag regressions, append to the logs.

    ``now`` is the run's time in the logs. Progress goes to ``control`` (items: requests done of requests planned;
    phase: ``warm-up llama3.2:3b``, ``measure ...``, ``concurrency 4x ...``); ``control.check()`` runs between
    requests, so a cancel stops the run there (raising Cancelled) and nothing is written. Raises Failed when there
    is nothing to test or the logs cannot be written.
    """
    smoke = config.smoke
    started = time.monotonic()
    targets = _targets(models or [_parse(text) for text in configured_models(config)])
    side = OllamaSide.of(config)
    control.update(items_done=0, items_total=2 * len(targets) + smoke.concurrency)
    try:
        ollama_version: str | None = version(side.url, min(smoke.timeout_sec, 10))
    except OllamaUnavailable:
        ollama_version = None  # the requests below say why, one by one
    results: list[ModelResult] = []
    for target in targets:
        # The first model to pass is the one the concurrency check loads again: hold it until then.
        results.append(_test_model(config, side, target, control, last=any(r.ok for r in results)))
    control.check()
    passed = next((r.name for r in results if r.ok), None)
    concurrency = None
    if passed is not None:
        control.update(phase=f"concurrency {smoke.concurrency}x {passed}")
        concurrency = measure_concurrency(config, side, passed, control)
        served = f" ({concurrency.served})" if concurrency.served else ""
        control.update(message=f"concurrency: {concurrency.successes}/{concurrency.requests} ok{served}")
    control.update(phase="write results", items_done=control.state.items_total)
    jsonl = perf_dir(config) / JSONL_NAME
    baselines = _baselines(jsonl, smoke.keep, {r.name for r in results if r.ok})
    results = [_judge(r, baselines.get(r.name, []), smoke.regression_margin) for r in results]
    duration = round(time.monotonic() - started, 3)
    run = SmokeRun(now, config.node_name, side.url, ollama_version, duration, results, concurrency)
    rotate_size = smoke.rotate_size_mb * 1024 * 1024
    append_lines(perf_dir(config) / LOG_NAME, run.log_lines(), rotate_size, smoke.keep)
    append_lines(jsonl, [json.dumps(r, ensure_ascii=False) for r in run.records()], rotate_size, smoke.keep)
    return run


def _parse(text: str) -> ModelRef | tuple[str, str]:
    """The reference, or (text, why it is not one): a bad name becomes a failed result, not an error."""
    try:
        return parse_ref(text)
    except BadReference as exc:
        return text, str(exc)


def _targets(refs: Sequence[ModelRef | tuple[str, str]]) -> list[ModelRef | tuple[str, str]]:
    """Each model once, in order: two variables may name the same model."""
    seen: set[str] = set()
    targets: list[ModelRef | tuple[str, str]] = []
    for ref in refs:
        if isinstance(ref, ModelRef):
            if ref.key in seen:
                continue
            seen.add(ref.key)
        targets.append(ref)
    return targets


def _options(config: Config) -> dict[str, Any]:
    return {"num_predict": config.smoke.num_predict, "temperature": 0}


def _test_model(
    config: Config, side: OllamaSide, target: ModelRef | tuple[str, str], control: JobControl, last: bool
) -> ModelResult:
    """Load the model (warm-up), then time the prompt; a failed load skips the prompt. ``last``: the measured
    request is the run's last to this model (else the concurrency check follows), so it sends OLLAMA_KEEP_ALIVE."""
    if isinstance(target, tuple):
        text, reason = target
        control.advance(items_done=2)
        control.update(message=f"{text}: not a model name")
        return ModelResult(text, "", "invalid_name", f"{reason}; nothing was sent to Ollama")
    control.check()
    url, timeout, name = side.url, config.smoke.timeout_sec, target.api_name
    control.update(phase=f"warm-up {name}")
    warmup = generate(url, name, timeout=timeout, keep_alive=side.hold_sec)
    sent = [keep_alive_value(side.hold_sec)]
    control.advance(items_done=1)
    if not warmup.ok:
        control.advance(items_done=1)
        control.update(message=f"{name}: loading failed: {warmup.failure}")
        reason = f"loading failed: {warmup.reason}"
        return ModelResult(target.text, name, warmup.failure, reason, keep_alive_sent=sent, keep_alive_why=side.why)
    control.check()
    control.update(phase=f"measure {name}")
    keep = side.keep_alive_sec if last else side.hold_sec
    measured = generate(url, name, config.smoke.prompt, _options(config), timeout, keep_alive=keep)
    sent.append(keep_alive_value(keep))
    control.advance(items_done=1)
    result = replace(
        _model_result(target.text, measured, warmup.wall_sec), keep_alive_sent=sent, keep_alive_why=side.why
    )
    if result.ok:
        control.update(message=f"{name}: first token {result.first_token_sec:.3f} s")
    else:
        control.update(message=f"{name}: failed: {result.failure}")
    return result


def _model_result(text: str, g: Generation, warmup_sec: float) -> ModelResult:
    if g.ok and g.first_token_sec is None:
        g = replace(g, failure="bad_response", reason=f"the stream ended ({g.done_reason}) without any text")
    return ModelResult(
        model=text,
        name=g.model,
        failure=g.failure,
        reason=g.reason,
        first_token_sec=_round(g.first_token_sec),
        load_sec=_round(g.load_sec),
        total_sec=_round(g.total_sec),
        tokens_per_sec=_round(g.tokens_per_sec),
        eval_count=g.eval_count,
        warmup_sec=_round(warmup_sec),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def measure_concurrency(config: Config, side: OllamaSide, name: str, control: JobControl) -> ConcurrencyResult:
    """``smoke.concurrency`` requests for the prompt to ``name`` at once, each in its own thread timing its own first
    token; the items of ``control`` count them as they finish. They are the run's last to the model, so they send
    OLLAMA_KEEP_ALIVE; whether Ollama served them in parallel or queued them is judged by ``served_at_once``."""
    count = config.smoke.concurrency
    started = time.perf_counter()
    outcomes: list[Generation] = []
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="hxd-smoke") as pool:
        args = (side.url, name, config.smoke.prompt, _options(config), config.smoke.timeout_sec, side.keep_alive_sec)
        for future in as_completed([pool.submit(generate, *args) for _ in range(count)]):
            outcomes.append(future.result())
            control.advance(items_done=1)
    timed = [g for g in outcomes if g.ok and g.first_token_sec is not None]
    firsts = sorted(g.first_token_sec for g in timed if g.first_token_sec is not None)
    failed = [g for g in outcomes if not g.ok]
    at_once = served_at_once(timed)
    served = "" if len(timed) < 2 else "parallel" if at_once == len(timed) else "queued"
    return ConcurrencyResult(
        name=name,
        requests=count,
        successes=count - len(failed),
        p50_sec=_round(_percentile(firsts, 0.50)),
        p95_sec=_round(_percentile(firsts, 0.95)),
        wall_sec=round(time.perf_counter() - started, 4),
        failures=dict(Counter(g.failure for g in failed)),
        reason=failed[0].reason if failed else "",
        served=served,
        at_once=at_once,
        num_parallel=side.num_parallel,
        spread_sec=_round(firsts[-1] - firsts[0]) if firsts else None,
        served_why=_served_why(served, at_once, len(timed), side.num_parallel),
        keep_alive_sent=keep_alive_value(side.keep_alive_sec),
    )


def served_at_once(timed: Sequence[Generation]) -> int:
    """How many of requests sent together Ollama served at once, from the spread of their first-token times.

    Ollama lets a loaded model serve OLLAMA_NUM_PARALLEL requests; the others wait on the runner's semaphore
    (llm/llama_server.go: Completion, line 1536) until one of those has finished, so a queued request's first token
    comes at least a whole request later than the fastest one's. Requests served at once get theirs together. So:
    the requests whose first token came within half the shortest request's duration of the fastest first token.
    """
    if not timed:
        return 0
    fastest = min(g.first_token_sec or 0.0 for g in timed)
    shortest = min(g.wall_sec for g in timed)
    return sum((g.first_token_sec or 0.0) - fastest <= shortest / 2 for g in timed)


def _served_why(served: str, at_once: int, timed: int, parallel: int) -> str:
    """The verdict in words, against what OLLAMA_NUM_PARALLEL lets Ollama do."""
    setting = f"OLLAMA_NUM_PARALLEL={parallel}"
    expected = min(parallel, timed)
    if not served:
        return "fewer than two requests got a first token: nothing to compare"
    if at_once == expected:
        if served == "parallel":
            return f"all {timed} first tokens came together: served in parallel, as {setting} allows"
        return f"{setting}: Ollama served {at_once} at a time and queued the rest, as it is configured to"
    if at_once < expected:
        return (
            f"Ollama served {at_once} at a time although {setting} allows {expected}: some architectures are held at "
            "1 (server/sched.go), or Ollama does not run with the env file's value"
        )
    return f"Ollama served {at_once} at a time although {setting}: it does not run with the env file's value"


def _percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest rank: the smallest value with at least ``fraction`` of the values at or below it."""
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)] if ordered else None


def _judge(result: ModelResult, history: list[float], margin: float) -> ModelResult:
    """Set the baseline (median of the model's last good runs) and the regression flag."""
    if not result.ok or result.first_token_sec is None or len(history) < MIN_BASELINE_RUNS:
        return result
    baseline = statistics.median(history)
    return replace(result, baseline_sec=_round(baseline), regression=result.first_token_sec > baseline * (1 + margin))


def _baselines(jsonl: Path, keep: int, names: set[str]) -> dict[str, list[float]]:
    """First-token latencies of the last BASELINE_RUNS good runs of each of ``names``, newest first."""
    history: dict[str, list[float]] = {name: [] for name in names}
    for record in _records_newest_first(jsonl, keep):
        if not any(len(values) < BASELINE_RUNS for values in history.values()):
            break
        values = history.get(record.get("name", ""))
        first = record.get("first_token_sec")
        if values is None or len(values) >= BASELINE_RUNS or not isinstance(first, int | float):
            continue
        if record.get("check") == "model" and record.get("ok") is True:
            values.append(float(first))
    return history


def _records_newest_first(jsonl: Path, keep: int) -> Iterator[dict[str, Any]]:
    """The objects of ``jsonl`` and its rotated files, newest first; lines that are not JSON objects are skipped."""
    for path in [jsonl, *(jsonl.with_name(f"{jsonl.name}.{index}") for index in range(1, keep + 1))]:
        try:
            lines = path.read_bytes().splitlines()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise Failed(f"{path}: cannot read the smoke history: {exc.strerror}; check its permissions") from None
        for line in reversed(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def last_smoke(config: Config) -> dict[str, Any]:
    """The ``LastSmoke`` structure of the newest run in the JSON lines (``{}`` before the first run); the daemon
    reads it once at start, in a thread, and takes ``SmokeRun.summary()`` after each run."""
    run: list[dict[str, Any]] = []
    for record in _records_newest_first(perf_dir(config) / JSONL_NAME, config.smoke.keep):
        if run and record.get("time") != run[0].get("time"):
            break
        run.insert(0, record)
    return summarize(run) if run else {}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's records as ``{time, ok, models: {model: {ok, first_token_sec, regression, reason}},
    concurrency: {name, requests, successes, p50_sec, p95_sec}}``; unmeasured values are left out (D-Bus has no
    null), as is ``concurrency`` when the check was skipped."""
    models = {
        str(r.get("model")): _present(r, ("ok", "first_token_sec", "regression", "reason"))
        for r in records
        if r.get("check") == "model"
    }
    summary: dict[str, Any] = {
        "time": str(records[0].get("time", "")),
        "ok": all(r.get("ok") is True and not r.get("regression") for r in records),
        "models": models,
    }
    for record in records:
        if record.get("check") == "concurrency":
            summary["concurrency"] = _present(record, ("name", "requests", "successes", "p50_sec", "p95_sec"))
    return summary


def _present(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: record[key] for key in keys if record.get(key) is not None}

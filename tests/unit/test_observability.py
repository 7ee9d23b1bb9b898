"""Logs, metrics and tracing in one process: JSON and text log lines carry the job's fields
and never a Spool key; the log format follows the command and the terminal; worker
metrics label pass-through names as such; the Grafana dashboard asks only for metrics the
code registers; spans cross a job through its `traceparent`; and with tracing off nothing
of OpenTelemetry is loaded."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from api.metrics import Metrics
from shared import logs, tracing
from shared.cli import build_parser
from shared.redact import RedactQueryFilter
from shared.settings import Settings
from worker.metrics import PASSTHROUGH, WorkerMetrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "spool.json"
KEY = "sk-spool-AbCdEf0123456789_-xyz"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.makeLogRecord(
        {"name": "worker.job_run", "levelname": "WARNING", "levelno": 30, "msg": message}
    )
    made.args = args or None
    for name, value in extra.items():
        setattr(made, name, value)
    logs.JobContextFilter().filter(made)
    return made


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Whatever a test installs on the root logger goes again afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    chatty = {name: logging.getLogger(name).level for name in logs.CHATTY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in chatty.items():
        logging.getLogger(name).setLevel(was)


# -- log lines --------------------------------------------------------------------------


def test_a_json_line_carries_the_jobs_fields_and_the_failures_code_and_reason() -> None:
    with logs.job_context(stream_id="s1", key_id="key_1", model="chat", provider="openai"):
        logs.update(deployment="chat#2")
        line = json.loads(
            logs.JsonFormatter().format(
                record("job %s failed", "s1", code="upstream_error", reason="boom")
            )
        )
    assert line["message"] == "job s1 failed" and line["level"] == "warning"
    assert line["logger"] == "worker.job_run" and line["time"].startswith("20")
    fields = {k: line[k] for k in logs.FIELDS if k in line}
    assert fields == {
        "stream_id": "s1",
        "key_id": "key_1",
        "model": "chat",
        "provider": "openai",
        "deployment": "chat#2",
    }
    assert line["code"] == "upstream_error" and line["reason"] == "boom"
    # Outside the job's context, lines carry none of it.
    assert "stream_id" not in json.loads(logs.JsonFormatter().format(record("idle")))


def test_a_spool_key_never_reaches_a_line_in_either_format() -> None:
    try:
        raise RuntimeError(f"upstream said {KEY}")
    except RuntimeError:
        failing = record("quoted %s", KEY, reason=f"bad key {KEY}")
        failing.exc_info = sys.exc_info()
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        text = formatter.format(failing)
        assert KEY not in text and "sk-spool-" not in text, text
        assert "[redacted]" in text
    # Words that merely contain `ft_` are left alone.
    assert logs.scrub("draft_mode left_over") == "draft_mode left_over"
    assert logs.scrub("follow ft_abc123") == "follow [redacted]"


def test_a_text_line_names_the_job_before_any_traceback() -> None:
    with logs.job_context(stream_id="s2", model="demo"):
        try:
            raise ValueError("x")
        except ValueError:
            failing = record("job failed")
            failing.exc_info = sys.exc_info()
    head, _, rest = logs.TextFormatter().format(failing).partition("\n")
    assert head.endswith("worker.job_run: job failed [stream_id=s2 model=demo]")
    assert rest.startswith("Traceback")


async def test_tasks_share_their_jobs_context_which_ends_with_the_job() -> None:
    seen: list[dict[str, str]] = []
    release = asyncio.Event()

    async def pump() -> None:
        logs.update(deployment="d2")  # the run that awaits it sees the change

    async def lingering() -> None:
        await release.wait()
        seen.append(logs.job_fields())

    with logs.job_context(stream_id="s3"):
        await asyncio.create_task(pump())
        assert logs.job_fields() == {"stream_id": "s3", "deployment": "d2"}
        left_running = asyncio.create_task(lingering())
    assert logs.job_fields() == {}
    release.set()
    await left_running
    assert seen == [{}]  # a task that outlives the job does not go on naming it
    logs.update(model="x")  # outside any job: nothing to change
    assert logs.job_fields() == {}


@pytest.mark.parametrize(
    ("command", "terminal", "configured", "expected"),
    [
        ("api", False, None, "json"),
        ("worker", False, None, "json"),
        ("api", True, None, "text"),
        ("worker", True, None, "text"),
        ("dev", False, None, "text"),
        ("dev", True, None, "text"),
        ("keys", False, None, "text"),
        ("api", False, "text", "text"),
        ("dev", True, "json", "json"),
    ],
)
def test_the_log_format_follows_the_setting_the_command_and_the_terminal(
    command: str, terminal: bool, configured: str | None, expected: str
) -> None:
    settings = Settings.model_validate({"log_format": configured})
    stream = Terminal() if terminal else io.StringIO()
    assert logs.log_format(settings, command, stream) == expected


def test_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("SPOOL_LOG_FORMAT", "")
    assert Settings().log_format is None
    monkeypatch.setenv("SPOOL_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


def test_uvicorns_access_log_keeps_its_redaction_in_json(
    monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert logs.setup_logging(Settings(), "api") == "json"
    access = logging.getLogger("uvicorn.access")
    redaction = RedactQueryFilter()
    access.addFilter(redaction)
    try:
        access.warning(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            f"/v1/streams/abc?k%65y={KEY};follow_token=ft_secret",
            "1.1",
            200,
        )
    finally:
        access.removeFilter(redaction)
    (line,) = [json.loads(text) for text in err.getvalue().splitlines()]
    assert line["logger"] == "uvicorn.access"
    assert line["message"] == '127.0.0.1:5000 - "GET /v1/streams/abc?[redacted] HTTP/1.1" 200'


def test_libraries_per_request_lines_are_kept_only_at_debug(
    monkeypatch: pytest.MonkeyPatch, root_logging: None
) -> None:
    """httpx's line per upstream request and arq's two per job say what Spool's own lines
    say: at info they are dropped (their warnings stay); at debug they are kept."""
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    logs.setup_logging(Settings(), "worker")
    logging.getLogger("httpx").info("HTTP Request: POST https://upstream/v1 200")
    logging.getLogger("arq.worker").info("0.00s -> job:generate()")
    logging.getLogger("arq.worker").warning("job expired")
    logging.getLogger("worker.job_run").info("job abc completed")
    messages = [json.loads(text)["message"] for text in err.getvalue().splitlines()]
    assert messages == ["job expired", "job abc completed"]

    err.truncate(0)
    err.seek(0)
    logs.setup_logging(Settings(log_level="debug"), "worker")
    logging.getLogger("httpx").info("HTTP Request: POST https://upstream/v1 200")
    messages = [json.loads(text)["message"] for text in err.getvalue().splitlines()]
    assert messages == ["HTTP Request: POST https://upstream/v1 200"]


# -- metrics ----------------------------------------------------------------------------


def test_pass_through_names_are_labelled_as_such() -> None:
    fleet = {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    settings = Settings.model_validate(
        {
            "models": {
                "chat": {"deployments": [fleet, {**fleet, "name": "east"}]},
                "single": fleet,
                "named": {**fleet, "name": "primary"},
            }
        }
    )
    metrics = WorkerMetrics(settings)
    assert metrics.model("chat") == "chat" and metrics.model("demo") == "demo"
    assert metrics.model("openai/gpt-4o-mini") == PASSTHROUGH
    assert [metrics.deployment(n) for n in ("chat#1", "east", "single", "primary")] == [
        "chat#1",
        "east",
        "single",
        "primary",
    ]
    assert metrics.deployment("demo/anything") == PASSTHROUGH


def registered(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry's metrics expose."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        else:
            names.add(family.name)
    return names


def test_the_dashboard_asks_only_for_registered_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 15
    known = registered(WorkerMetrics().registry) | registered(Metrics().registry)
    shown: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bspool_[a-z_]+\b", expr))
        assert names, f"no Spool metric in {expr!r}"
        assert names <= known, f"{expr!r} asks for {names - known}"
        shown |= names
    # What operators asked for is on it.
    for wanted in (
        "spool_queue_depth",
        "spool_open_stream_tails",
        "spool_worker_open_jobs",
        "spool_worker_queue_wait_seconds_bucket",
        "spool_worker_time_to_first_token_seconds_bucket",
        "spool_worker_upstream_errors_total",
        "spool_worker_tokens_total",
        "spool_worker_attempts_total",
        "spool_worker_cooldowns_total",
        "spool_policy_decisions_total",
        "spool_reaper_actions_total",
        "spool_webhook_deliveries_total",
        "spool_redis_errors_total",
    ):
        assert wanted in shown, wanted
    assert all(
        p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"] if "targets" in p
    )


def test_metrics_port_is_a_flag_and_a_setting() -> None:
    args = build_parser().parse_args(["worker", "--metrics-port", "9100", "--processes", "2"])
    assert args.metrics_port == 9100 and args.processes == 2
    assert Settings.model_validate({"worker_metrics_port": 9100}).worker_metrics_port == 9100
    with pytest.raises(ValueError, match="worker_metrics_port"):
        Settings.model_validate({"worker_metrics_port": 70000})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["api", "--metrics-port", "9100"])


# -- tracing ----------------------------------------------------------------------------


def test_a_jobs_spans_form_one_trace_through_its_traceparent() -> None:
    exporter = InMemorySpanExporter()
    settings = Settings.model_validate({"otel_service_name": "spool-test"})
    tracer = tracing.start(settings, "api", exporter=exporter)
    assert tracer is not None and tracing.active() is tracer
    try:
        with tracing.span("generation.create", kind="producer") as created:
            carried = tracing.traceparent()
        assert created is not None and carried is not None
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", carried)
        # What a worker does with the job's `trace`, in some other task or process.
        with tracing.span("generation.run", kind="consumer", parent=carried) as run:
            with tracing.span("upstream.attempt", kind="client") as attempt:
                assert attempt is not None
            tracing.fail(run, "upstream_error")
    finally:
        tracing.stop()
    assert tracing.active() is None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    create, run_span, try_span = (
        spans["generation.create"],
        spans["generation.run"],
        spans["upstream.attempt"],
    )
    assert create.context is not None and run_span.context is not None
    assert {s.context.trace_id for s in spans.values() if s.context} == {create.context.trace_id}
    assert run_span.parent is not None and run_span.parent.span_id == create.context.span_id
    assert try_span.parent is not None and try_span.parent.span_id == run_span.context.span_id
    assert run_span.status.description == "upstream_error"
    assert create.resource.attributes["service.name"] == "spool-test"


def test_with_tracing_off_there_are_no_spans_and_no_trace_context() -> None:
    assert tracing.start(Settings(), "worker") is None
    with tracing.span("generation.run") as span:
        assert span is None
    assert tracing.traceparent() is None
    tracing.fail(span, "nothing happens")


def test_with_tracing_off_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "from shared import tracing\n"
        "from shared.settings import Settings\n"
        "import worker.main, worker.runtime, worker.generation, api.generation\n"
        "assert tracing.start(Settings(), 'worker') is None\n"
        "with tracing.span('x') as s: pass\n"
        # FastAPI imports OpenTelemetry's API itself; the SDK and exporter stay out.
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')\n"
        "                or m.startswith('opentelemetry.exporter'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    worker_only = (
        "import sys\n"
        "import worker.main, worker.runtime, worker.generation\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", worker_only], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_collector_url_gets_the_traces_path_once() -> None:
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/v1/traces/") == "http://c:4318/v1/traces"
    with pytest.raises(ValueError, match="otlp_endpoint"):
        Settings.model_validate({"otlp_endpoint": "collector:4318"})

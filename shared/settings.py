"""Spool's settings: one typed object, built once by `load_settings` and passed in."""

from __future__ import annotations

import base64
import binascii
import fnmatch
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError
from shared.model_table import AutoRouter, ModelEntry, ModelGroup, TableEntry
from shared.policy import Policy
from shared.redis.address import ClusterAddress, parse_redis_url

DEFAULT_MODELS: dict[str, ModelEntry] = {"demo": ModelEntry(provider="demo", name="demo")}


class McpServer(BaseModel):
    """An MCP server whose tools workers run for the model: reached over streamable HTTP
    (`url`, through the outbound guard, with headers whose values come from the named
    environment variables) or over stdio (`command`, started by the worker)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    env: dict[str, str] = Field(default_factory=dict)  # for a stdio server, besides PATH
    headers_env: dict[str, str] = Field(default_factory=dict)
    allowed_tools: list[str] | None = None  # None: all of the server's tools
    timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # A tool's result is cut to this many bytes of text (and says so) before the model
    # and the stream get it.
    max_output_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.url is None) == (self.command is None):
            raise ValueError("an MCP server needs exactly one of url (HTTP) or command (stdio)")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("an MCP server's url must be http:// or https://")
        return self

    def headers(self) -> dict[str, str]:
        return {name: os.environ.get(env, "") for name, env in self.headers_env.items()}


# Providers a `provider/model` name may pass straight through to, and what such an entry
# gets besides its upstream model name.
PASSTHROUGH_DEFAULTS: dict[str, dict[str, str]] = {
    "openai": {"api_key_env": "OPENAI_API_KEY"},
    "demo": {},
}


def passthrough_pattern(entry: str) -> str:
    """A `passthrough` entry as the pattern it stands for: a bare provider means every
    model of that provider (`openai` is `openai/*`)."""
    return entry if "/" in entry else f"{entry}/*"


TaskKind = Literal["image", "video", "audio"]
TASK_KINDS: tuple[TaskKind, ...] = ("image", "video", "audio")
TaskStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _default_status_values() -> dict[TaskStatusName, list[str]]:
    # The spellings fal's queue and Replicate's predictions use, among others.
    return {
        "queued": ["IN_QUEUE", "queued", "starting", "pending", "QUEUED"],
        "running": ["IN_PROGRESS", "processing", "running", "RUNNING"],
        "succeeded": ["COMPLETED", "succeeded", "success", "completed", "SUCCEEDED"],
        "failed": ["FAILED", "failed", "error", "ERROR"],
        "cancelled": ["CANCELLED", "canceled", "cancelled", "CANCELED"],
    }


class QueueHttpConfig(BaseModel):
    """How a submit → poll → fetch upstream is spoken to. Paths are joined to the model's
    `base_url` and may hold `{id}` (the upstream's job id) and `{model}`; fields are dotted
    paths into the upstream's JSON (`data.status`, `output`, `images`)."""

    model_config = ConfigDict(extra="forbid")

    submit_path: str
    status_path: str
    result_path: str | None = Field(
        default=None, description="where the finished job's outputs are; default: the status"
    )
    cancel_path: str | None = None
    cancel_method: Literal["POST", "PUT", "DELETE"] = "POST"
    input_wrapper: str | None = Field(
        default=None, description="send {wrapper: input} instead of the input itself"
    )
    extra_body: dict[str, Any] = Field(default_factory=dict)
    id_field: str = "id"
    status_field: str = "status"
    status_values: dict[TaskStatusName, list[str]] = Field(default_factory=_default_status_values)
    progress_field: str | None = None
    logs_field: str | None = None
    outputs_field: str = "output"
    output_url_field: str = "url"
    output_type_field: str | None = "content_type"
    error_field: str = "error"
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    auth_header: str = "Authorization"
    auth_scheme: str | None = "Bearer"


class TaskModelEntry(BaseModel):
    """One row of the task model table: a public model name for asset tasks."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["demo", "queue_http"]
    kinds: list[TaskKind] = Field(default_factory=lambda: list(TASK_KINDS), min_length=1)
    model: str | None = Field(default=None, description="upstream model name; defaults to the key")
    base_url: str | None = None
    api_key_env: str | None = None
    # Fetch upstream-hosted outputs into the artifact store (else pass their URLs through).
    store_outputs: bool = True
    connect_timeout_s: float = Field(default=10.0, gt=0)
    request_timeout_s: float = Field(default=60.0, gt=0)
    extra_headers: dict[str, str] = Field(default_factory=dict)
    queue_http: QueueHttpConfig | None = None
    # Input fields this model takes besides the common ones (prompt, width, duration_s …);
    # any other field a client sends is refused.
    input_fields: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _queue_http_is_configured(self) -> TaskModelEntry:
        if self.provider == "queue_http" and (self.queue_http is None or not self.base_url):
            raise ValueError("a queue_http task model needs base_url and a queue_http section")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


DEFAULT_TASK_MODELS: dict[str, TaskModelEntry] = {"demo": TaskModelEntry(provider="demo")}


_CHECK_ACROSS_FIELDS: ContextVar[bool] = ContextVar("check_across_fields", default=True)


Threshold = Annotated[int, Field(ge=1)]  # one of the garbage collector's thresholds


class Settings(BaseSettings):
    """Every knob of an API or worker process. Environment variables use the `SPOOL_` prefix
    (except `REDIS_URL`); `SPOOL_CONFIG` names a YAML file with the same keys."""

    model_config = SettingsConfigDict(env_prefix="SPOOL_", extra="forbid")

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "SPOOL_REDIS_URL", "redis_url")
    )
    # The Redis that holds the queue, the job indexes, API keys and limits. Defaults to
    # REDIS_URL; required when REDIS_URL names a Redis Cluster (arq needs one primary).
    queue_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    config: Path | None = None
    data_dir: Path = Path(".spool")
    log_level: str = "info"
    # How log lines are written: `json` (one object a line; a line about a job carries its
    # stream, task and key ids, model, provider and deployment as fields) or `text`.
    # Unset: json under `spool api` and `spool worker` when stderr is not a terminal (a
    # container, a service manager), text otherwise.
    log_format: Literal["json", "text"] | None = None
    # `spool worker --metrics-port`: the port a worker serves Prometheus metrics on, at
    # `host`; process i of `--processes N` takes port + i. None: no metrics server.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # OpenTelemetry: spans for each job (the API's enqueue, the worker's run, each upstream
    # attempt) are exported over OTLP/HTTP to this collector (`http://collector:4318`, or
    # its full `/v1/traces` URL). None: no tracing, and nothing of OpenTelemetry is loaded.
    otlp_endpoint: str | None = None
    otel_service_name: str | None = None  # default: spool-api / spool-worker

    # The model table (see `shared.model_table`): one upstream, a group of deployments or
    # an auto-router per public name; the demo model is added unless demo_enabled is false.
    models: dict[str, TableEntry] = Field(default_factory=dict)
    # Content policies (see `shared.policy.Policy`), by the name models, groups, routers
    # and keys name them in `policy`: checked on the input before it is queued and on the
    # output as it streams. A moderation endpoint is reached through the outbound guard
    # (`upstream_allowlist`).
    policies: dict[str, Policy] = Field(default_factory=dict)
    # MCP servers whose tools workers run (see McpServer), by the name models and requests
    # select them by.
    mcp_servers: dict[str, McpServer] = Field(default_factory=dict)

    keepalive_interval_s: float = Field(default=15.0, gt=0)
    stream_maxlen: int = Field(default=10_000, ge=100)
    retention_s: int = Field(default=24 * 3600, ge=1)
    tombstone_s: int = Field(default=7 * 24 * 3600, ge=1)
    job_timeout_s: int = Field(default=600, ge=1)
    nonstream_timeout_s: float = Field(default=600.0, gt=0)
    lease_s: float = Field(default=10.0, gt=0)
    queue_timeout_s: int = Field(default=600, ge=1)
    max_requeues: int = Field(default=2, ge=0)
    upstream_max_attempts: int = Field(default=3, ge=1)
    upstream_backoff_s: float = Field(default=0.25, ge=0)
    upstream_backoff_max_s: float = Field(default=8.0, ge=0)
    upstream_retry_after_max_s: float = Field(default=30.0, ge=0)
    redis_retry_s: float = Field(default=10.0, ge=0)
    # How long an API process waits for Redis to answer one round trip of a request (a
    # stalled Redis then answers 503 redis_unavailable instead of a hang). Blocking reads
    # and the workers' writes (which ride outages out for redis_retry_s) are not cut by it.
    redis_request_timeout_s: float = Field(default=3.0, gt=0)
    on_disconnect: Literal["continue", "cancel"] = "continue"
    abandon_grace_s: float | None = Field(default=None, gt=0)
    worker_max_jobs: int = Field(default=200, ge=1)
    # The garbage collector's thresholds in `spool api` and `spool worker` processes (see
    # `shared.process_group.tune_gc`); null keeps CPython's own (700, 10, 10).
    gc_thresholds: tuple[Threshold, Threshold, Threshold] | None = (50_000, 20, 100)
    worker_poll_interval_s: float = Field(default=0.5, gt=0)
    worker_shutdown_grace_s: int = Field(default=30, ge=0)
    # Serve OpenAI chat completions without the web framework's per-request steps when the
    # request is valid (see `api.fast_routes`; anything else goes the framework's way).
    fast_routes: bool = True
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    # A connection must send a whole request head within this time of opening (or of its
    # last response), or it is closed; an idle keep-alive connection is closed sooner.
    header_timeout_s: float = Field(default=10.0, gt=0)
    http_idle_timeout_s: float = Field(default=5.0, gt=0)
    max_json_depth: int = Field(default=64, ge=4, le=1000)
    max_messages: int = Field(default=1000, ge=1)
    max_string_chars: int = Field(default=1_000_000, ge=1)
    max_tools: int = Field(default=128, ge=0)
    # The most bytes one image, audio clip or document may have, inline in a request or
    # fetched by a worker from its URL for a provider that takes only inline bytes.
    max_media_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_media_urls: int = Field(default=16, ge=0)
    auth_enabled: bool = True
    max_follow_tokens: int = Field(default=16, ge=1, le=10_000)  # per stream
    # How long a follow token may be used unless minted with its own `ttl_s`; None: as
    # long as its stream is kept. Never longer than that.
    follow_token_ttl_s: int | None = Field(default=None, ge=1)
    # What a job may make Spool keep: its stored request (a generation's messages and
    # options; a task's input), and per key, the bytes its jobs keep for as long as they
    # are kept (stream retention for generations, task retention for tasks; a quota that
    # drains over retention_s, so a key's jobs hold about this much at any time). None: no
    # per-key limit.
    max_stored_request_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_task_input_bytes: int = Field(default=64 * 1024, ge=1024)
    max_stored_bytes_per_key: int | None = Field(default=512 * 1024 * 1024, ge=1024)
    # New jobs are refused (503) once the Redis holding the streams uses this share of its
    # `maxmemory`, so running streams finish in the rest. Redis must set maxmemory (and
    # maxmemory-policy noeviction): with no maxmemory there is nothing to measure against.
    redis_memory_high: float = Field(default=0.9, gt=0, le=1)
    # Per-key usage by model and day is kept this long (the budget's total is kept for good).
    usage_retention_days: int = Field(default=31, ge=1, le=3660)
    max_concurrent_generations: int | None = Field(default=None, ge=1)
    upstream_allowlist: str = ""  # hosts or CIDRs that may be private/loopback/link-local
    # The built-in `demo` chat and task models. Off in production: no `demo` entry, no
    # `demo/<x>` pass-through, and a model-table entry with `provider: demo` is refused.
    demo_enabled: bool = True
    # `provider/model` names clients may send without a model-table entry, passed straight
    # through to that provider (openai: api.openai.com on OPENAI_API_KEY; demo). Patterns
    # in fnmatch style against the whole name (`openai/gpt-4o*`); a bare provider
    # (`openai`) allows all of its models. Empty: no pass-through. Environment: commas.
    passthrough: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["demo/*"])
    # Origins whose web pages may call Spool (CORS; `*` for any, for development). None by
    # default: browsers on other origins are refused. Environment: commas.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Redis connections one process may hold, whatever its load (an API process's stream
    # hub serves every open stream on one of them).
    redis_max_connections: int = Field(default=32, ge=4)
    # Processes `spool api` and `spool worker` run (the --processes flag overrides them).
    api_processes: int = Field(default=1, ge=1, le=256)
    worker_processes: int = Field(default=1, ge=1, le=256)

    # Asset task models; the demo task model is added unless demo_enabled is false.
    task_models: dict[str, TaskModelEntry] = Field(default_factory=dict)
    task_timeout_s: int = Field(default=3600, ge=1)
    task_retention_s: int = Field(default=7 * 24 * 3600, ge=1)
    artifacts_dir: Path | None = None  # default: <data_dir>/artifacts
    # Where clients fetch stored outputs when something else serves `artifacts_dir` (a CDN,
    # nginx): `<artifacts_base_url>/<task id>/<file>`. Empty: Spool serves them itself.
    artifacts_base_url: str = ""
    public_base_url: str = ""  # prefix of the URLs Spool hands out; "" keeps them relative
    max_output_bytes: int = Field(default=1024**3, ge=1024)
    artifact_sweep_interval_s: float = Field(default=300.0, gt=0)
    webhook_secret: SecretStr | None = None  # Standard Webhooks `whsec_<base64>`
    webhook_allowlist: str = ""  # callback hosts or CIDRs that may be private/loopback
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_s: float = Field(default=5.0, ge=0)
    webhook_backoff_max_s: float = Field(default=3600.0, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("redis_url", "queue_url", "otlp_endpoint", "log_format", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("redis_url", "queue_url", mode="after")
    @classmethod
    def _redis_url_form(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)  # raises ValueError naming what is wrong
        return value

    @model_validator(mode="after")
    def _queue_beside_a_cluster(self) -> Settings:
        if not _CHECK_ACROSS_FIELDS.get():
            return self
        if self.queue_url is not None and isinstance(
            parse_redis_url(self.queue_url), ClusterAddress
        ):
            raise ValueError(
                "SPOOL_QUEUE_URL cannot be a Redis Cluster: the queue needs one primary "
                "(plain redis:// or redis+sentinel://)"
            )
        if self.queue_url is None and self.cluster:
            raise ValueError(
                "REDIS_URL names a Redis Cluster, which holds the streams; set SPOOL_QUEUE_URL "
                "to a plain or Sentinel Redis for the queue, the job indexes, keys and limits"
            )
        return self

    @field_validator("otlp_endpoint", mode="after")
    @classmethod
    def _otlp_endpoint_form(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL (OTLP over HTTP)")
        return value

    @property
    def cluster(self) -> bool:
        """Whether REDIS_URL names a Redis Cluster."""
        return self.redis_url is not None and isinstance(
            parse_redis_url(self.redis_url), ClusterAddress
        )

    @property
    def control_url(self) -> str | None:
        """The Redis of the queue, the indexes, keys and limits (see `queue_url`)."""
        return self.queue_url or self.redis_url

    @model_validator(mode="after")
    def _server_tools_exist(self) -> Settings:
        for name, entry in self.upstreams():
            missing = [s for s in entry.server_tools if s not in self.mcp_servers]
            if missing:
                raise ValueError(
                    f"models.{name}.server_tools names {', '.join(missing)}, "
                    "which mcp_servers does not configure"
                )
        return self

    @model_validator(mode="after")
    def _routes_resolve(self) -> Settings:
        """Deployments get their default names (`<group>#<n>`), unique across the table;
        fallbacks and router rules name models that exist (not routers)."""
        named: dict[str, str] = {}
        for name, entry in list(self.models.items()):
            if isinstance(entry, ModelEntry) and entry.name is None:
                # A lone upstream is known by its public name (X-Spool-Deployment).
                self.models[name] = entry.model_copy(update={"name": name})
            if isinstance(entry, ModelGroup):
                deployments = [
                    d if d.name else d.model_copy(update={"name": f"{name}#{i + 1}"})
                    for i, d in enumerate(entry.deployments)
                ]
                self.models[name] = entry.model_copy(update={"deployments": deployments})
                for d in deployments:
                    assert d.name is not None
                    if d.name in named:
                        raise ValueError(
                            f"models.{name}: the deployment name {d.name!r} is taken "
                            f"(by models.{named[d.name]})"
                        )
                    named[d.name] = name
        for name, entry in self.models.items():
            if isinstance(entry, AutoRouter):
                targets = [
                    (f"router.rules[{i}].use", r.use) for i, r in enumerate(entry.router.rules)
                ]
                targets.append(("router.default", entry.router.default))
            else:
                targets = [
                    (f"{attr}[{i}]", target)
                    for attr in (
                        "fallbacks",
                        "context_window_fallbacks",
                        "content_policy_fallbacks",
                    )
                    for i, target in enumerate(getattr(entry, attr))
                ]
            for where, target in targets:
                if target not in self.models and not (target == "demo" and self.demo_enabled):
                    raise ValueError(
                        f"models.{name}.{where} names {target!r}, which is not a model"
                    )
                if isinstance(self.models.get(target), AutoRouter):
                    raise ValueError(
                        f"models.{name}.{where} names {target!r}, an auto-router; "
                        "it must name a model or a group"
                    )
        return self

    @model_validator(mode="after")
    def _policies_exist(self) -> Settings:
        for name, entry in self.models.items():
            if entry.policy is not None and entry.policy not in self.policies:
                raise ValueError(
                    f"models.{name}.policy names {entry.policy!r}, which policies does not "
                    "configure"
                )
        return self

    def upstreams(self) -> list[tuple[str, ModelEntry]]:
        """Every upstream of the table, by the public model it serves: single entries and
        each deployment of each group."""
        found: list[tuple[str, ModelEntry]] = []
        for name, entry in self.models.items():
            if isinstance(entry, ModelEntry):
                found.append((name, entry))
            elif isinstance(entry, ModelGroup):
                found.extend(
                    (f"{name}.deployments[{i}]", d) for i, d in enumerate(entry.deployments)
                )
        return found

    @model_validator(mode="after")
    def _grace_outlasts_keepalive(self) -> Settings:
        if not _CHECK_ACROSS_FIELDS.get():
            return self
        # Readers mark themselves at least once per keep-alive interval; a shorter grace
        # would cancel streams that are still being read.
        if (
            self.abandon_grace_s is not None
            and self.abandon_grace_s <= self.keepalive_interval_s + 1
        ):
            raise ValueError("abandon_grace_s must exceed keepalive_interval_s + 1")
        return self

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _webhook_secret_form(cls, value: object) -> object:
        if value in ("", None):
            return None
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(raw, str) or not raw.startswith("whsec_"):
            raise ValueError("webhook_secret must have the form whsec_<base64>")
        try:
            key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            raise ValueError("webhook_secret must have the form whsec_<base64>") from None
        if len(key) < 16:
            raise ValueError("webhook_secret must hold at least 16 bytes")
        return raw

    @property
    def artifacts_root(self) -> Path:
        return self.artifacts_dir or self.data_dir / "artifacts"

    @field_validator("passthrough", "cors_origins", mode="before")
    @classmethod
    def _list_from_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("passthrough", mode="after")
    @classmethod
    def _passthrough_providers(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            provider = passthrough_pattern(entry).partition("/")[0]
            if provider not in PASSTHROUGH_DEFAULTS:
                raise ValueError(
                    f"passthrough entry {entry!r} must start with a provider that supports "
                    f"pass-through ({', '.join(PASSTHROUGH_DEFAULTS)}), as in 'openai/gpt-4o*'"
                )
        return entries

    @model_validator(mode="after")
    def _demo_models(self) -> Settings:
        if not _CHECK_ACROSS_FIELDS.get():
            return self
        if self.demo_enabled:
            # The demo models are always there unless the table redefines them.
            self.models = {**DEFAULT_MODELS, **self.models}
            self.task_models = {**DEFAULT_TASK_MODELS, **self.task_models}
            return self
        demo = [f"models.{n}" for n, e in self.upstreams() if e.provider == "demo"]
        demo += [f"task_models.{n}" for n, e in self.task_models.items() if e.provider == "demo"]
        if demo:
            raise ValueError(
                f"demo_enabled is false, but {', '.join(demo)} use provider: demo; "
                "remove them or set demo_enabled: true"
            )
        if "passthrough" in self.model_fields_set and any(
            passthrough_pattern(p).startswith("demo/") for p in self.passthrough
        ):
            raise ValueError(
                "demo_enabled is false, but passthrough allows demo/ names; "
                "remove them or set demo_enabled: true"
            )
        return self

    def passthrough_allows(self, name: str) -> bool:
        """Whether the `provider/model` name may pass straight through to its provider."""
        if name.startswith("demo/") and not self.demo_enabled:
            return False
        return any(fnmatch.fnmatchcase(name, passthrough_pattern(p)) for p in self.passthrough)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read SPOOL_CONFIG file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"SPOOL_CONFIG file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"SPOOL_CONFIG file {path} must hold a mapping at the top level")
    return raw


def load_settings(**overrides: Any) -> Settings:
    """Build the settings: flags (`overrides`) beat environment variables, which beat the
    YAML file named by `SPOOL_CONFIG`, which beats the defaults."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    config_path = flags.get("config") or os.environ.get("SPOOL_CONFIG")
    from_file = _read_yaml(Path(config_path)) if config_path else {}
    try:
        # The environment alone may be incomplete (the file holds the rest): fields that
        # depend on each other are checked once everything is merged.
        token = _CHECK_ACROSS_FIELDS.set(False)
        try:
            env_only = Settings()
        finally:
            _CHECK_ACROSS_FIELDS.reset(token)
        env_set = env_only.model_fields_set
        merged = {**from_file, **{k: getattr(env_only, k) for k in env_set}, **flags}
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc

"""Prometheus metrics of one worker process, on one registry, served by `spool worker
--metrics-port` (`serve`). Everything is counted once per job or per upstream attempt,
never per token or event. Labels are fixed names, codes and the model table's model and
deployment names; a `provider/model` name a client passed through is labelled
`passthrough`, so no client can add series."""

from __future__ import annotations

import functools
import logging
import os

from prometheus_client import CollectorRegistry, start_http_server

from shared.errors import ConfigError
from shared.metric_types import Counter, Gauge, Histogram
from shared.model_table import ModelEntry
from shared.settings import Settings

log = logging.getLogger(__name__)

PASSTHROUGH = "passthrough"
PROCESS_INDEX_ENV = "SPOOL_PROCESS_INDEX"  # set by `--processes N` for each copy
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
JOB_KINDS = ("generation", "task")


class WorkerMetrics:
    def __init__(self, settings: Settings | None = None) -> None:
        self.registry = r = CollectorRegistry()
        self._models = frozenset(settings.models) if settings else frozenset()
        self._deployments = frozenset(deployment_names(settings)) if settings else frozenset()
        self.first_token = Histogram(
            "spool_worker_time_to_first_token_seconds",
            "From the start of the upstream attempt that answered to its first event.",
            ["model", "provider"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "spool_worker_queue_wait_seconds",
            "From a job's creation to the claim of the worker that runs it.",
            ["model", "provider"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "spool_worker_upstream_errors_total",
            "Failed upstream attempts, by provider, Spool's error code and the upstream's "
            "HTTP status (`none` when it gave none).",
            ["provider", "code", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "spool_worker_tokens_total",
            "Tokens of finished generations as their providers reported them, by model and "
            "direction (`input`, `output`).",
            ["model", "direction"],
            registry=r,
        )
        self.open_jobs = Gauge(
            "spool_worker_open_jobs",
            "Jobs this process is running now, by kind (`generation`, `task`).",
            ["kind"],
            registry=r,
        )
        self.jobs = Counter(
            "spool_worker_jobs_total",
            "Jobs this process ended, by kind and final status.",
            ["kind", "status"],
            registry=r,
        )
        self.job_errors = Counter(
            "spool_worker_job_errors_total",
            "Jobs that ended with an error event, by its code.",
            ["code"],
            registry=r,
        )
        self.attempts = Counter(
            "spool_worker_attempts_total",
            "Upstream attempts of generations, by model, deployment and outcome (`ok`, or "
            "the error code of a failed one).",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.cooldowns = Counter(
            "spool_worker_cooldowns_total",
            "Times a deployment of a model group was cooled down after failures.",
            ["deployment"],
            registry=r,
        )
        self.policy_decisions = Counter(
            "spool_policy_decisions_total",
            "Content-policy decisions, by policy, stage (`output` here) and outcome "
            "(`allowed`, `blocked`, or `error`: the moderation endpoint failed).",
            ["policy", "stage", "outcome"],
            registry=r,
        )
        self.reaper_actions = Counter(
            "spool_reaper_actions_total",
            "Jobs this process's reaper settled: `requeued` (worker lost before any output), "
            "`lost` (after output), `expired` (queued too long), `cancelled`.",
            ["action"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "spool_webhook_deliveries_total",
            "Webhook delivery jobs, by outcome (`delivered`, `retry`, `failed`, or `busy`, "
            "`gone`, `skipped` for a job with nothing to do).",
            ["outcome"],
            registry=r,
        )
        self.redis_errors = Counter(
            "spool_redis_errors_total",
            "Redis commands that failed, by what issued them.",
            ["where"],
            registry=r,
        )
        for kind in JOB_KINDS:
            self.open_jobs.labels(kind)

    def model(self, name: str) -> str:
        """A model name as a label: a model-table name, else `passthrough`."""
        return name if name in self._models else PASSTHROUGH

    def deployment(self, name: str) -> str:
        """A deployment name as a label: one of the model table's, else `passthrough`."""
        return name if name in self._deployments else PASSTHROUGH

    def count_policy(self, policy: str, stage: str, outcome: str) -> None:
        self.policy_decisions.labels(policy, stage, outcome).inc()

    def count_reaped(self, action: str) -> None:
        self.reaper_actions.labels(action).inc()

    def redis_error(self, where: str) -> None:
        self.redis_errors.labels(where).inc()

    def serve(self, settings: Settings) -> int | None:
        """Serve the metrics over HTTP (in a thread of its own) on `worker_metrics_port`
        plus this process's index among `--processes N`; returns the port."""
        if settings.worker_metrics_port is None:
            return None
        port = settings.worker_metrics_port + int(os.environ.get(PROCESS_INDEX_ENV, "0"))
        try:
            start_http_server(port, addr=settings.host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve worker metrics on {settings.host}:{port}: {exc.strerror}"
            ) from None
        log.info("worker metrics on http://%s:%d/metrics", settings.host, port)
        return port


def deployment_names(settings: Settings) -> set[str]:
    """The names the model table's upstreams run under: a group's deployments', and a
    single upstream's own (its `name`, else its public name, as `group_plan` gives it)."""
    names = {entry.deployment for _, entry in settings.upstreams()}
    for name, entry in settings.models.items():
        if isinstance(entry, ModelEntry):
            names.add(entry.name or name)
    return names


@functools.cache
def unused() -> WorkerMetrics:
    """Metrics nobody reads: for runs made outside a worker process (tests, tools)."""
    return WorkerMetrics()

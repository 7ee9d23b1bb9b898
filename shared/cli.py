"""The `spool` command: `spool dev` (everything in one command), `spool api`, `spool worker`,
`spool keys`. Ctrl-C and SIGTERM stop each of them quietly: a server stops gracefully and
exits 0; anything else stops where it is and exits 130."""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from shared import tracing
from shared.errors import ConfigError, SpoolError
from shared.logs import setup_logging
from shared.process_group import StopSignal, leave_sigint_to_the_parent, stop_children, tune_gc
from shared.redact import RedactQueryFilter
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings, load_settings

log = logging.getLogger("spool")

SERVERS = ("dev", "api", "worker")
INTERRUPTED_EXIT = 130  # 128 + SIGINT: a command that was cut short
INTERRUPT_GRACE_S = 2.0  # how long a cut-short command may take to unwind


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived where no server handles it (starting up, stopping, or a
    command that is no server): the command stops where it is, without a traceback."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _child_env(settings: Settings) -> dict[str, str]:
    """The environment of the processes a command starts: its own, with the settings
    file and the log format it chose, so they log alike."""
    env = dict(os.environ)
    if settings.config is not None:
        env["SPOOL_CONFIG"] = str(settings.config.resolve())
    if settings.log_format is not None:
        env["SPOOL_LOG_FORMAT"] = settings.log_format
    return env


def _group(settings: Settings, role: str, processes: int) -> int:
    """`spool <role> --processes N`: N single-process copies under one supervisor."""
    from shared.process_group import run_group

    env = _child_env(settings)
    argv = [sys.executable, "-m", "shared.cli", role, "--processes", "1"]
    if role == "worker" and settings.worker_metrics_port is not None:
        # Copy i serves its metrics on port + i (see WorkerMetrics.serve).
        if settings.worker_metrics_port + processes - 1 > 65535:
            raise ConfigError(f"--metrics-port leaves no room for {processes} processes")
        env["SPOOL_WORKER_METRICS_PORT"] = str(settings.worker_metrics_port)
    if role == "api":
        # Every API process listens on the same port; the kernel spreads connections.
        argv += ["--host", settings.host, "--port", str(settings.port)]
        env[REUSE_PORT_ENV] = "1"
    log.info("starting %d %s processes", processes, role)
    return run_group(argv, processes, env=env, grace_s=settings.worker_shutdown_grace_s + 5)


REUSE_PORT_ENV = "SPOOL_REUSE_PORT"


def _listening_socket(settings: Settings) -> socket.socket:
    """The API's socket, shared with its sibling processes through SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(LISTEN_BACKLOG)
    return sock


LISTEN_BACKLOG = 4096


def cmd_api(settings: Settings, processes: int | None = None) -> int:
    import asyncio

    import uvicorn

    from api.app import create_app, served
    from api.http_protocol import GuardedHttpProtocol

    processes = processes or settings.api_processes
    if processes > 1:
        return _group(settings, "api", processes)

    app = create_app(settings)

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT, open SSE tails end at their next event boundary (clients
        resume on another replica) instead of holding the shutdown open."""

        _loop: asyncio.AbstractEventLoop | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            services = getattr(app.state, "services", None)
            if services is not None and self._loop is not None:
                services.begin_drain(self._loop)
            super().handle_exit(sig, frame)

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self._loop = asyncio.get_running_loop()
            await super().serve(sockets)

    config = uvicorn.Config(
        served(app, settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=GuardedHttpProtocol.configured(settings),
        proxy_headers=False,  # applied inside the app (`api.app.served`)
        timeout_keep_alive=settings.http_idle_timeout_s,  # type: ignore[arg-type]
        # uvicorn's loggers propagate to the one handler `setup_logging` installed, so
        # its lines (the access log too) come out in the process's format.
        log_config=None,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        backlog=LISTEN_BACKLOG,
    )
    # The access log never shows a query string (it may hold a key or a follow token).
    logging.getLogger("uvicorn.access").addFilter(RedactQueryFilter())
    sockets = [_listening_socket(settings)] if os.environ.get(REUSE_PORT_ENV) else None
    tracing.start(settings, "api")
    tune_gc(settings.gc_thresholds)
    try:
        DrainingServer(config).run(sockets=sockets)
    finally:
        tracing.stop()
    return 0


def cmd_worker(settings: Settings, processes: int | None = None) -> int:
    from worker.main import run_worker

    processes = processes or settings.worker_processes
    if processes > 1:
        return _group(settings, "worker", processes)

    tracing.start(settings, "worker")
    tune_gc(settings.gc_thresholds)
    try:
        run_worker(settings)
    finally:
        tracing.stop()
    return 0


def _redis_url(settings: Settings) -> str:
    """REDIS_URL, or the embedded Redis a running `spool dev` wrote down."""
    if settings.control_url:
        return settings.control_url  # keys live beside the queue
    noted = settings.data_dir / "redis" / "url"
    if noted.exists():
        return noted.read_text().strip()
    raise SpoolError("no Redis to talk to: set REDIS_URL, or start `spool dev` first")


async def _keys_command(settings: Settings, args: argparse.Namespace) -> int:
    from shared.auth import KeyStore
    from shared.redis.clients import create_redis

    redis = create_redis(settings, url=_redis_url(settings))
    store = KeyStore(redis)
    try:
        if args.action == "create":
            secret, key = await store.create(
                args.name,
                rpm=args.rpm,
                concurrency=args.concurrency,
                budget_tokens=args.budget_tokens,
                models=args.models,
                policy=args.policy,
            )
            print(f"created {key.id} ({key.name}); the key is shown only once:")
            print(secret)
        elif args.action == "list":
            for key in await store.list():
                limits = [
                    f"{name}={getattr(key, name)}"
                    for name in ("rpm", "concurrency", "budget_tokens")
                    if getattr(key, name) is not None
                ]
                if key.models is not None:
                    limits.append("models=" + ",".join(key.models))
                if key.policy is not None:
                    limits.append(f"policy={key.policy}")
                state = "revoked" if key.revoked else "active"
                print(f"{key.id}  {key.name}  {state}  {', '.join(limits) or 'no limits'}")
        elif not await store.revoke(args.key_id):
            print(f"spool: no key {args.key_id}", file=sys.stderr)
            return 1
        else:
            print(f"revoked {args.key_id}")
        return 0
    finally:
        await redis.aclose()


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    async def interruptible() -> int:
        # Ctrl-C or SIGTERM cancels the command where it waits (connecting to Redis, say),
        # rather than breaking into whatever runs at that instant.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop_now() -> None:
            task.cancel()
            # A cancel that some library swallows (a connection half made, say) must not
            # leave the command waiting: it ends anyway a moment later.
            loop.call_later(INTERRUPT_GRACE_S, _exit_interrupted)

        for stop in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(stop, stop_now)
        try:
            return await _keys_command(settings, args)
        except asyncio.CancelledError:
            return INTERRUPTED_EXIT

    return asyncio.run(interruptible())


async def _dev_key(settings: Settings, redis_url: str) -> str:
    """The local key `spool dev` prints: reused across restarts while Redis keeps it."""
    from shared.auth import KeyStore
    from shared.redis.clients import create_redis

    path = settings.data_dir / "dev-key"
    redis = create_redis(settings, url=redis_url)
    try:
        store = KeyStore(redis)
        if path.exists() and await store.lookup(path.read_text().strip()):
            return path.read_text().strip()
        secret, _ = await store.create("spool-dev")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        # Created owner-only from the start, not made private after being written.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secret + "\n")
        return secret
    finally:
        await redis.aclose()


def _dev_webhook_secret(settings: Settings) -> str:
    """The webhook signing secret `spool dev` uses when none is set: made once, kept in
    the data directory so receivers keep verifying across restarts."""
    path = settings.data_dir / "webhook-secret"
    if path.exists():
        return path.read_text().strip()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(secret + "\n")
    return secret


def cmd_dev(settings: Settings) -> int:
    """Embedded Redis (unless REDIS_URL is set), one API process and one worker process.
    Ctrl-C or SIGTERM stops all of them, in order."""
    redis: EmbeddedRedis | None = None
    env = _child_env(settings)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.redis_url:
            redis = EmbeddedRedis(settings.data_dir / "redis")
            env["REDIS_URL"] = redis.start()
            (redis.data_dir / "url").write_text(redis.url + "\n")
            log.info("embedded redis-server at %s (data in %s)", redis.url, redis.data_dir)
        else:
            env["REDIS_URL"] = settings.redis_url
        webhook_secret = None
        if settings.webhook_secret is None:
            webhook_secret = env["SPOOL_WEBHOOK_SECRET"] = _dev_webhook_secret(settings)
        dev_key = None
        if settings.auth_enabled:
            import asyncio

            dev_key = asyncio.run(_dev_key(settings, env["REDIS_URL"]))
        base = [sys.executable, "-m", "shared.cli"]
        # From here a stop signal is noted and the loop below ends; before, it interrupts.
        stop = StopSignal()
        for argv in (
            [*base, "worker", "--processes", "1"],
            [
                *base,
                "api",
                "--processes",
                "1",
                "--host",
                settings.host,
                "--port",
                str(settings.port),
            ],
        ):
            children.append(subprocess.Popen(argv, env=env, preexec_fn=leave_sigint_to_the_parent))
        print(
            f"Spool is serving on http://{settings.host}:{settings.port}  (Ctrl-C stops it)",
            flush=True,
        )
        if dev_key:
            print(f"Your local API key:  export SPOOL_API_KEY={dev_key}", flush=True)
        if webhook_secret:
            print(f"Webhook signing secret: {webhook_secret}", flush=True)
        while not stop.received and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stop.received else 1
    finally:
        stop_children(children, settings.worker_shutdown_grace_s + 5)
        if redis is not None:
            redis.stop()


def _model_list(value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one model")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spool", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (or SPOOL_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    keys_cmd = sub.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys_cmd.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key (shown once)")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--concurrency", type=int, help="open generations at once")
    create.add_argument("--budget-tokens", type=int, help="total tokens the key may use")
    create.add_argument(
        "--models",
        type=_model_list,
        help="comma-separated models the key may use, exact or patterns (gpt-4o*); default: any",
    )
    create.add_argument(
        "--policy",
        metavar="NAME",
        help="content policy (a name under `policies` in the settings) for the key's requests",
    )
    keys_sub.add_parser("list", help="list keys (never their secrets)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    for name, help_text in (
        ("dev", "embedded Redis, API and worker in one command"),
        ("api", "serve the HTTP API"),
        ("worker", "run a worker"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        if name != "worker":
            cmd.add_argument("--host", help="interface to listen on (SPOOL_HOST)")
            cmd.add_argument("--port", type=int, help="port to listen on (SPOOL_PORT)")
        if name != "dev":
            cmd.add_argument(
                "--processes",
                type=int,
                choices=range(1, 257),
                metavar="N",
                help=f"run N {name} processes (SPOOL_{name.upper()}_PROCESSES; default 1)",
            )
        if name == "worker":
            cmd.add_argument(
                "--metrics-port",
                type=int,
                metavar="PORT",
                help="serve Prometheus metrics on this port; with --processes N, process i "
                "on PORT+i (SPOOL_WORKER_METRICS_PORT)",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Until a server takes them over (and after it gives them back), SIGINT and SIGTERM
    # stop the command quietly; one that is ignored (a child of `spool dev`, a job a
    # script put in the background) stays ignored.
    for stop in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(stop) is not signal.SIG_IGN:
            signal.signal(stop, _interrupt)
    command = None
    try:
        args = build_parser().parse_args(argv)
        command = args.command
        return _run(args)
    except Interrupted:
        # A server told to stop has stopped as it should; anything else was cut short.
        if command in SERVERS:
            return 0
        # Cut short anywhere, even halfway through making an object: its finalizer may
        # then fail on what it lacks, which is no news to the one who pressed Ctrl-C.
        sys.unraisablehook = _ignore_unraisable
        return INTERRUPTED_EXIT


def _ignore_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    return None


def _exit_interrupted() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            config=args.config,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            worker_metrics_port=getattr(args, "metrics_port", None),
        )
    except SpoolError as exc:
        print(f"spool: {exc.message}", file=sys.stderr)
        return 2
    # The processes a command starts log as it does (see `_child_env`).
    chosen = setup_logging(settings, args.command)
    settings = settings.model_copy(update={"log_format": chosen})
    try:
        if args.command == "keys":
            return cmd_keys(settings, args)
        if args.command == "api":
            return cmd_api(settings, args.processes)
        if args.command == "worker":
            return cmd_worker(settings, args.processes)
        return cmd_dev(settings)
    except SpoolError as exc:
        print(f"spool: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

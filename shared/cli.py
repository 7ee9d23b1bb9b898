"""The `spool` command: `spool dev` (everything in one command), `spool api`, `spool worker`."""

from __future__ import annotations

import argparse
import base64
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from shared.embedded_redis import EmbeddedRedis
from shared.errors import SpoolError
from shared.process_group import StopSignal, stop_children
from shared.redact import RedactQueryFilter
from shared.settings import Settings, load_settings

log = logging.getLogger("spool")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _group(settings: Settings, role: str, processes: int) -> int:
    """`spool <role> --processes N`: N single-process copies under one supervisor."""
    from shared.process_group import run_group

    env = dict(os.environ)
    if settings.config is not None:
        env["SPOOL_CONFIG"] = str(settings.config.resolve())
    argv = [sys.executable, "-m", "shared.cli", role, "--processes", "1"]
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
        timeout_keep_alive=settings.http_idle_timeout_s,  # type: ignore[arg-type]
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        backlog=LISTEN_BACKLOG,
    )
    logging.getLogger("uvicorn.access").addFilter(RedactQueryFilter())
    sockets = [_listening_socket(settings)] if os.environ.get(REUSE_PORT_ENV) else None
    DrainingServer(config).run(sockets=sockets)
    return 0


def cmd_worker(settings: Settings, processes: int | None = None) -> int:
    from worker.main import run_worker

    processes = processes or settings.worker_processes
    if processes > 1:
        return _group(settings, "worker", processes)

    run_worker(settings)
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
    from shared.redis import create_redis

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

    return asyncio.run(_keys_command(settings, args))


async def _dev_key(settings: Settings, redis_url: str) -> str:
    """The local key `spool dev` prints: reused across restarts while Redis keeps it."""
    from shared.auth import KeyStore
    from shared.redis import create_redis

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
    env = dict(os.environ)
    if settings.config is not None:
        env["SPOOL_CONFIG"] = str(settings.config.resolve())
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
    children: list[subprocess.Popen[bytes]] = []
    stop = StopSignal()
    try:
        children.append(subprocess.Popen([*base, "worker", "--processes", "1"], env=env))
        api = [*base, "api", "--processes", "1", "--host", settings.host]
        children.append(subprocess.Popen([*api, "--port", str(settings.port)], env=env))
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(
            config=args.config,
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
        )
    except SpoolError as exc:
        print(f"spool: {exc.message}", file=sys.stderr)
        return 2
    _setup_logging(settings)
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

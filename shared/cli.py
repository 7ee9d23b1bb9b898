"""The `spool` command: `spool dev` (everything in one command), `spool api`, `spool worker`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from shared.embedded_redis import EmbeddedRedis
from shared.errors import SpoolError
from shared.settings import Settings, load_settings

log = logging.getLogger("spool")


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_api(settings: Settings) -> int:
    import asyncio

    import uvicorn

    from api.app import create_app

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
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    DrainingServer(config).run()
    return 0


def cmd_worker(settings: Settings) -> int:
    from worker.main import run_worker

    run_worker(settings)
    return 0


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
        log.info("embedded redis-server at %s (data in %s)", redis.url, redis.data_dir)
    else:
        env["REDIS_URL"] = settings.redis_url
    base = [sys.executable, "-m", "shared.cli"]
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        children.append(subprocess.Popen([*base, "worker"], env=env))
        children.append(
            subprocess.Popen(
                [*base, "api", "--host", settings.host, "--port", str(settings.port)], env=env
            )
        )
        print(
            f"Spool is serving on http://{settings.host}:{settings.port}  (Ctrl-C stops it)",
            flush=True,
        )
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        return 0 if stopping else 1
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(settings.worker_shutdown_grace_s + 5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if redis is not None:
            redis.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spool", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (or SPOOL_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("dev", "embedded Redis, API and worker in one command"),
        ("api", "serve the HTTP API"),
        ("worker", "run a worker"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        if name != "worker":
            cmd.add_argument("--host", help="interface to listen on (SPOOL_HOST)")
            cmd.add_argument("--port", type=int, help="port to listen on (SPOOL_PORT)")
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
    commands = {"dev": cmd_dev, "api": cmd_api, "worker": cmd_worker}
    try:
        return commands[args.command](settings)
    except SpoolError as exc:
        print(f"spool: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Real Spool processes for end-to-end tests and the benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from shared.redis.embedded import free_port


def write_config(path: Path, models: dict[str, Any], **settings: Any) -> Path:
    """A settings file for test processes; task outputs go next to it, not into the
    working directory."""
    settings.setdefault("artifacts_dir", str(path.parent / "artifacts"))
    path.write_text(yaml.safe_dump({"models": models, **settings}))
    return path


class SpoolProcess:
    def __init__(
        self,
        role: str,
        redis_url: str,
        config: Path,
        log_dir: Path,
        port: int | None = None,
        processes: int = 1,
        *,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
    ):
        """`prefix` runs the process through another command (`ip netns exec <host>` for
        the multi-host tests); `host` is the address it listens on and is reached at."""
        self.role = role
        self.port = port
        self.host = host
        self.processes = processes
        self.log_path = log_dir / f"{role}-{port or os.getpid()}-{time.monotonic_ns()}.log"
        args = [*prefix, sys.executable, "-m", "shared.cli", "--config", str(config), role]
        if port is not None:
            args += ["--host", host, "--port", str(port)]
        if processes > 1:
            args += ["--processes", str(processes)]
        env = {**os.environ, "REDIS_URL": redis_url, "SPOOL_LOG_LEVEL": "warning"}
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.role} exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.role} did not become healthy:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_api(redis_url: str, config: Path, log_dir: Path, processes: int = 1) -> SpoolProcess:
    """An API process on a free port (with `processes` > 1, `spool api --processes N`),
    once it answers /healthz."""
    proc = SpoolProcess("api", redis_url, config, log_dir, port=free_port(), processes=processes)
    proc.wait_healthy()
    return proc


def start_worker(redis_url: str, config: Path, log_dir: Path, processes: int = 1) -> SpoolProcess:
    """A worker process (with `processes` > 1, `spool worker --processes N`)."""
    return SpoolProcess("worker", redis_url, config, log_dir, processes=processes)


def wait_ready(api_url: str, timeout_s: float = 20.0) -> None:
    """Until /readyz says Redis is reachable and at least one worker is alive."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{api_url} never became ready")


def create_key(config: Path, redis_url: str, name: str, *limits: str) -> str:
    """A new API key's secret, made with `spool keys create` as an operator would."""
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "--config", str(config), "keys", "create",
         "--name", name, *limits],
        env={"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert "created key_" in done.stdout, done.stdout
    return done.stdout.strip().splitlines()[-1]

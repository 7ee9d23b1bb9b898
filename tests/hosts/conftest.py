"""The multi-host deployment: Redis (a primary, a replica, three Sentinels), two API
replicas, two workers, the mock upstream and nginx (the repository's deploy/nginx.conf),
each on a host of its own in a network namespace. Needs root, iproute2 and nginx: without
them every test here fails, saying so (`make test-hosts`; `.ci/run` installs them)."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import FAULT_SETTINGS, MEASUREMENTS
from tests.hosts.netlab import Host, Lab, LabUnavailable
from tests.processes import SpoolProcess, wait_ready, write_config
from tests.redis_topology import ClusterSet, Place, RedisNode, SentinelSet

REPO = Path(__file__).resolve().parents[2]
API_PORT = 8000
UPSTREAM_PORT = 8080
LB_PLAIN_PORT = 8081  # nginx's TLS server, in plain HTTP, for the tests' clients
LEASE_S = 3.0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("multi-host measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


@dataclass
class Deployment:
    lab: Lab
    workdir: Path
    config: Path
    redis: SentinelSet | ClusterSet
    hosts: dict[str, Host]
    apis: dict[str, SpoolProcess]
    workers: dict[str, SpoolProcess]

    @property
    def lb_url(self) -> str:
        return f"http://{self.hosts['lb'].ip}:{LB_PLAIN_PORT}"

    def api_url(self, name: str) -> str:
        return self.apis[name].url

    def worker_named(self, stream_id: str) -> str:
        """The worker host whose process has claimed the stream."""
        assert isinstance(self.redis, SentinelSet)
        client = self.redis.primary().client()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            name = client.hget(f"spool:{{{stream_id}}}:job", "worker")
            if name:
                pid = int(name.decode().split(":")[1])
                return next(h for h, w in self.workers.items() if w.process.pid == pid)
            time.sleep(0.02)
        raise AssertionError(f"no worker claimed {stream_id}")

    def redis_hosts(self) -> list[Host]:
        return [self.hosts[name] for name in ("r1", "r2", "r3")]

    def wait_all_ready(self, timeout_s: float = 30.0) -> None:
        for api in self.apis.values():
            wait_ready(api.url, timeout_s=timeout_s)
        wait_ready(self.lb_url, timeout_s=timeout_s)


def self_signed(directory: Path, ip: str) -> tuple[Path, Path]:
    """A certificate for `ip` (its own CA: clients trust it by this file) and its key."""
    if shutil.which("openssl") is None:
        raise LabUnavailable("the multi-host tests need openssl: `apt-get install openssl`")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=spool-test", "-addext", f"subjectAltName=IP:{ip}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def tls_cert(workdir: Path) -> Path:
    """The certificate nginx serves on the load balancer's port 443."""
    return workdir / "nginx" / "tls" / "cert.pem"


def nginx_conf(workdir: Path, lb: Host, apis: list[Host]) -> Path:
    """deploy/nginx.conf as shipped, with this network's addresses and a self-signed
    certificate, inside the few lines of a complete nginx configuration. Port 80 redirects
    and 443 serves TLS, as shipped; the TLS server also listens in plain HTTP on
    LB_PLAIN_PORT, where the tests' clients (which speak plain HTTP) reach it."""
    site = (REPO / "deploy" / "nginx.conf").read_text()
    servers = "".join(f"    server {api.ip}:{API_PORT};\n" for api in apis)
    site, count = re.subn(r"(?m)^    server 127\.0\.0\.1:\d+;\n", "", site)
    assert count == 2, "deploy/nginx.conf no longer lists two local API replicas"
    site = site.replace("upstream spool_api {\n", "upstream spool_api {\n" + servers)
    site = site.replace("listen 80;", f"listen {lb.ip}:80;")
    assert "listen 443 ssl;" in site, "deploy/nginx.conf no longer serves TLS on 443"
    site = site.replace(
        "listen 443 ssl;", f"listen {lb.ip}:443 ssl;\n    listen {lb.ip}:{LB_PLAIN_PORT};"
    )
    temp = workdir / "nginx"
    cert, key = self_signed(tls_cert(workdir).parent, lb.ip)
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", site)
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    site = site.replace("/var/log/nginx/", f"{temp}/")
    conf = temp / "nginx.conf"
    conf.write_text(
        f"""user root;
pid {temp}/nginx.pid;
error_log {temp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
{site}
}}
"""
    )
    return conf


def serve(
    lab: Lab, hosts: dict[str, Host], workdir: Path, redis_url: str, **extra: object
) -> tuple[Path, dict[str, SpoolProcess], dict[str, SpoolProcess]]:
    """The mock upstream, two API replicas and two workers on their hosts, and nginx in
    front of the replicas, all with `redis_url` (and `extra` settings)."""
    up = hosts["up"]
    up.popen(
        [".venv/bin/python", "-m", "tests.bench_upstream", "--host", up.ip,
         "--port", str(UPSTREAM_PORT)],
        workdir / "upstream.log", cwd=REPO,
    )  # fmt: skip
    models = {
        "quick": {"provider": "demo", "tokens_per_second": 300, "max_output_tokens": 30},
        "slow": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 60},
        "mock": {
            "provider": "openai",
            "base_url": f"http://{up.ip}:{UPSTREAM_PORT}/v1",
            "model": "bench",
        },
    }
    settings = {**FAULT_SETTINGS, "lease_s": LEASE_S,
                "upstream_allowlist": f"{lab.subnet}.0/24", **extra}  # fmt: skip
    config = write_config(workdir / "spool.yaml", models, **settings)
    apis = {
        name: SpoolProcess("api", redis_url, config, workdir, port=API_PORT,
                           host=hosts[name].ip, prefix=hosts[name].prefix)
        for name in ("api1", "api2")
    }  # fmt: skip
    workers = {
        name: SpoolProcess("worker", redis_url, config, workdir, prefix=hosts[name].prefix)
        for name in ("w1", "w2")
    }
    for api in apis.values():
        api.wait_healthy()
    lb = hosts["lb"]
    conf = nginx_conf(workdir, lb, [hosts["api1"], hosts["api2"]])
    lb.popen(["nginx", "-c", str(conf), "-g", "daemon off;"], workdir / "nginx.log")
    if not lab.netem:
        note = "this kernel has no netem: the hosts' links add no delay"
        if note not in MEASUREMENTS:
            MEASUREMENTS.append(note)
    return config, apis, workers


def placed_on(hosts: dict[str, Host], placement: dict[str, str]) -> Place:
    def place(node: str) -> tuple[str, tuple[str, ...]]:
        host = hosts[placement[node]]
        return host.ip, host.prefix

    return place


@pytest.fixture(scope="session")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Redis with Sentinel: a primary and a replica, three Sentinels on three hosts."""
    workdir = tmp_path_factory.mktemp("hosts")
    lab = Lab("sph")
    try:
        names = ["r1", "r2", "r3", "api1", "api2", "w1", "w2", "up", "lb"]
        hosts = {name: lab.add_host(name) for name in names}
        placement = {"node-0": "r1", "node-1": "r2", "sentinel-0": "r1", "sentinel-1": "r2",
                     "sentinel-2": "r3"}  # fmt: skip
        redis = SentinelSet(
            workdir / "redis", down_after_ms=1000, place=placed_on(hosts, placement)
        ).start()
        config, apis, workers = serve(lab, hosts, workdir, redis.url)
        deployment = Deployment(lab, workdir, config, redis, hosts, apis, workers)
        deployment.wait_all_ready()
        yield deployment
        for proc in [*apis.values(), *workers.values()]:
            proc.stop()
        redis.stop()
    finally:
        lab.close()


@pytest.fixture(scope="session")
def cluster_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The streams on a Redis Cluster of three masters and three replicas, each node on a
    host of its own; the queue on one more host."""
    workdir = tmp_path_factory.mktemp("hosts-cluster")
    lab = Lab("spc", subnet="10.78.0")
    try:
        nodes = [f"c{n}" for n in range(6)]
        names = [*nodes, "queue", "api1", "api2", "w1", "w2", "up", "lb"]
        hosts = {name: lab.add_host(name) for name in names}
        placement = {f"cluster-{n}": f"c{n}" for n in range(6)}
        cluster = ClusterSet(workdir / "cluster", place=placed_on(hosts, placement)).start()
        queue = RedisNode(workdir, "queue", [], place=placed_on(hosts, {"queue": "queue"}))
        queue.start()
        config, apis, workers = serve(
            lab, hosts, workdir, cluster.url,
            queue_url=f"redis://{queue.ip}:{queue.port}/0", lease_s=8,
        )  # fmt: skip
        deployment = Deployment(lab, workdir, config, cluster, hosts, apis, workers)
        deployment.wait_all_ready()
        yield deployment
        for proc in [*apis.values(), *workers.values()]:
            proc.stop()
        cluster.stop()
        queue.stop()
    finally:
        lab.close()


@pytest.fixture
def healthy(deployment: Deployment) -> Deployment:
    """Every link up, every route back, every process answering."""
    for host in deployment.hosts.values():
        host.restore()
        host.reconnect()
    for proc in [*deployment.apis.values(), *deployment.workers.values()]:
        assert proc.process.poll() is None, f"{proc.role} exited:\n{proc.log()[-3000:]}"
    deployment.wait_all_ready()
    return deployment


def upstream_answers(deployment: Deployment) -> bool:
    try:
        response = httpx.post(
            f"http://{deployment.hosts['up'].ip}:{UPSTREAM_PORT}/v1/chat/completions",
            json={"model": "bench", "messages": [], "max_tokens": 1},
            timeout=2,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def run_on(host: Host, *args: str) -> str:
    return subprocess.run([*host.prefix, *args], capture_output=True, text=True).stdout

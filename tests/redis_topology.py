"""Real Redis topologies for tests: a primary with replicas watched by Sentinels, each
`redis-server` a child process on a free port with its own directory."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis as sync_redis

from shared.redis.embedded import find_redis_server, free_port

SERVICE = "mymaster"

Place = Callable[[str], tuple[str, tuple[str, ...]]]
"""Where a node runs: its name → (address, command prefix), e.g. a network namespace."""


def on_this_host(name: str) -> tuple[str, tuple[str, ...]]:
    return "127.0.0.1", ()


_HANDED_OUT: set[int] = set()


def fresh_port() -> int:
    """A free port not handed out before by this process: nodes started one after the
    other must not be given the same one."""
    while True:
        port = free_port()
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class RedisNode:
    """One `redis-server` (a data node, or a Sentinel when `sentinel_conf` is given)."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        args: list[str],
        *,
        sentinel: bool = False,
        place: Place = on_this_host,
    ):
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ip, self.prefix = place(name)
        # On a host of its own a node takes Redis' usual port; beside others, a free one.
        self.port = fresh_port() if self.ip == "127.0.0.1" else (26379 if sentinel else 6379)
        self.args = args
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisNode:
        # Without a password Redis refuses clients from other hosts unless told otherwise.
        base = ["--port", str(self.port), "--bind", self.ip, "--dir", str(self.dir),
                "--logfile", "redis.log", "--daemonize", "no", "--protected-mode", "no"]  # fmt: skip
        if self.sentinel:
            conf = self.dir / "sentinel.conf"  # Sentinel rewrites its own file
            conf.write_text("\n".join(self.args) + "\n")
            command = [find_redis_server(), str(conf), "--sentinel", *base]
        else:
            command = [find_redis_server(), *base, "--save", "", "--appendonly", "no",
                       "--repl-diskless-sync-delay", "0", *self.args]  # fmt: skip
        self.process = subprocess.Popen(
            [*self.prefix, *command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except sync_redis.ConnectionError:
                time.sleep(0.02)
        raise AssertionError(f"{self.name} did not start:\n{self.log()[-2000:]}")

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(host=self.ip, port=self.port, socket_timeout=2)

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class SentinelSet:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum: a majority)
    that fail over `down_after_ms` after the primary stops answering."""

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 1,
        sentinels: int = 3,
        down_after_ms: int = 1000,
        place: Place = on_this_host,
    ) -> None:
        self.workdir = workdir
        self.down_after_ms = down_after_ms
        self.place = place
        self.nodes = [RedisNode(workdir, f"node-{n}", [], place=place) for n in range(replicas + 1)]
        self.sentinel_count = sentinels
        self.sentinels: list[RedisNode] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"{s.ip}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> SentinelSet:
        primary = self.nodes[0].start()
        for replica in self.nodes[1:]:
            replica.args = ["--replicaof", primary.ip, str(primary.port)]
            replica.start()
        self._wait(lambda: all(self._linked(r) for r in self.nodes[1:]), "replication link")
        quorum = self.sentinel_count // 2 + 1
        nodes = [RedisNode(self.workdir, f"sentinel-{n}", [], sentinel=True, place=self.place)
                 for n in range(self.sentinel_count)]  # fmt: skip
        ids = [f"{n + 1:040x}" for n in range(self.sentinel_count)]
        for n, node in enumerate(nodes):
            # Each is told of the replicas and the other Sentinels up front, instead of
            # finding them over the next seconds.
            node.args = [
                f"sentinel myid {ids[n]}",
                f"sentinel monitor {SERVICE} {primary.ip} {primary.port} {quorum}",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1",
                *(f"sentinel known-replica {SERVICE} {r.ip} {r.port}" for r in self.nodes[1:]),
                *(f"sentinel known-sentinel {SERVICE} {other.ip} {other.port} {ids[m]}"
                  for m, other in enumerate(nodes) if m != n),
            ]  # fmt: skip
        for node in nodes:
            self.sentinels.append(node.start())
        self._wait(self._sentinels_ready, "Sentinels to see the replicas and each other")
        return self

    def primary(self) -> RedisNode:
        """The node the Sentinels name as primary now."""
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            try:
                ip, port = sentinel.client().sentinel_get_master_addr_by_name(SERVICE)
            except sync_redis.ConnectionError:
                continue
            return next(n for n in self.nodes if (n.ip, n.port) == (ip.decode(), int(port)))
        raise AssertionError("no Sentinel answers")

    def wait_failover(self, old: RedisNode, timeout_s: float = 30.0) -> RedisNode:
        """Wait until a replica has been promoted in `old`'s place and takes writes."""
        self._wait(
            lambda: self.primary() is not old and self._writable(self.primary()),
            "a failover",
            timeout_s,
        )
        return self.primary()

    def wait_replicated(self, timeout_s: float = 30.0) -> None:
        """Wait until every replica holds all that the primary has taken so far: what a
        failover from now on cannot lose (see `wait_replicated`)."""
        primary = self.primary()
        wait_replicated(primary, [n for n in self.nodes if n is not primary], timeout_s)

    def wait_demoted(self, old: RedisNode, timeout_s: float = 30.0) -> None:
        """Wait until a primary that lived through a failover replicates the new one."""
        self._wait(lambda: self._linked(old), "the old primary to become a replica", timeout_s)

    def stop(self) -> None:
        for node in [*self.sentinels, *self.nodes]:
            node.stop()

    @staticmethod
    def _linked(replica: RedisNode) -> bool:
        info = replica.client().info("replication")
        return info.get("master_link_status") == "up"

    @staticmethod
    def _writable(node: RedisNode) -> bool:
        try:
            return node.alive and node.client().info("replication").get("role") == "master"
        except sync_redis.ConnectionError:
            return False

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = sentinel.client().sentinel_master(SERVICE)
            if int(state["num-slaves"]) < len(self.nodes) - 1:
                return False
            if int(state["num-other-sentinels"]) < self.sentinel_count - 1:
                return False
        return True

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        wait_until(ready, what, self.sentinels, timeout_s)


class ClusterSet:
    """A Redis Cluster of `masters` masters, each with `replicas_each` replicas, made with
    CLUSTER commands (no redis-cli needed); a master that stops answering for
    `node_timeout_ms` is replaced by its replica."""

    SLOTS = 16384

    def __init__(
        self,
        workdir: Path,
        *,
        masters: int = 3,
        replicas_each: int = 1,
        node_timeout_ms: int = 1000,
        place: Place = on_this_host,
    ) -> None:
        conf = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms)]  # fmt: skip
        count = masters * (1 + replicas_each)
        # The cluster bus gets a port of its own (by default it is the port + 10000, which
        # a free port may not leave room for).
        self.bus_ports = [fresh_port() for _ in range(count)]
        self.nodes = [
            RedisNode(workdir, f"cluster-{n}", [*conf, "--cluster-port", str(self.bus_ports[n])],
                      place=place)
            for n in range(count)
        ]  # fmt: skip
        self.masters = masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{n.ip}:{n.port}" for n in self.nodes[: self.masters])

    def start(self) -> ClusterSet:
        for node in self.nodes:
            node.start()
        ids = [node.client().execute_command("CLUSTER", "MYID").decode() for node in self.nodes]
        per = self.SLOTS // self.masters
        for m in range(self.masters):
            last = self.SLOTS if m == self.masters - 1 else (m + 1) * per
            self.nodes[m].client().execute_command("CLUSTER", "ADDSLOTS", *range(m * per, last))
        first = self.nodes[0].client()
        for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            first.execute_command("CLUSTER", "MEET", node.ip, node.port, bus_port)
        self._wait(
            lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), "the nodes to meet"
        )
        for n, replica in enumerate(self.nodes[self.masters :]):
            replica.client().execute_command("CLUSTER", "REPLICATE", ids[n % self.masters])
        self._wait(self._ok, "the cluster to be ok")
        return self

    def master_of(self, key: str) -> RedisNode:
        """The node that serves `key`'s slot now."""
        alive = next(n for n in self.nodes if n.alive)
        slot = alive.client().execute_command("CLUSTER", "KEYSLOT", key)
        for node in self.nodes:
            if not node.alive:
                continue
            try:
                for start, end, (ip, port, *_), *_ in node.client().execute_command(
                    "CLUSTER", "SLOTS"
                ):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if (n.ip, n.port) == (ip.decode(), port))
            except sync_redis.ConnectionError:
                continue
        raise AssertionError(f"no node serves slot {slot}")

    def wait_replicated(self, master: RedisNode, timeout_s: float = 30.0) -> None:
        """Wait until `master`'s replicas hold all it has taken so far (see
        `wait_replicated`): what its failover from now on cannot lose."""
        replicas = []
        for node in self.nodes:
            if node is master or not node.alive:
                continue
            info = node.client().info("replication")
            if (str(info.get("master_host")), info.get("master_port")) == (master.ip, master.port):
                replicas.append(node)
        assert replicas, f"{master.name} has no replica"
        wait_replicated(master, replicas, timeout_s)

    def masters_now(self) -> list[RedisNode]:
        return [n for n in self.nodes
                if n.alive and n.client().info("replication")["role"] == "master"]  # fmt: skip

    def move_slot(self, key: str, target: RedisNode) -> None:
        """Move `key`'s slot, with its keys, to the master `target`, as resharding does."""
        source = self.master_of(key)
        slot = source.client().execute_command("CLUSTER", "KEYSLOT", key)
        source_id, target_id = (
            n.client().execute_command("CLUSTER", "MYID").decode() for n in (source, target)
        )
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.client().execute_command(
                "MIGRATE", target.ip, target.port, "", 0, 5000, "KEYS", *keys
            )
        for master in self.masters_now():
            master.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def command_counts(self) -> dict[str, int]:
        """Commands each master has processed so far (INFO stats), by address."""
        counts = {}
        for node in self.nodes:
            if node.alive and node.client().info("replication")["role"] == "master":
                counts[f"{node.ip}:{node.port}"] = int(
                    node.client().info("stats")["total_commands_processed"]
                )
        return counts

    def wait_failover(self, old: RedisNode, timeout_s: float = 30.0) -> None:
        """Wait until no slot is served by `old` any more and the cluster is ok."""

        def replaced() -> bool:
            for node in (n for n in self.nodes if n.alive):
                client = node.client()
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
                for _, _, (ip, port, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if (ip.decode(), port) == (old.ip, old.port):
                        return False
            return True

        self._wait(replaced, "the cluster to fail over", timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def _known(node: RedisNode) -> int:
        return len(node.client().execute_command("CLUSTER", "NODES").decode().splitlines())

    def _ok(self) -> bool:
        for node in self.nodes:
            if node.client().cluster("info")["cluster_state"] != "ok":
                return False
        replicas = self.nodes[self.masters :]
        return all(
            r.client().info("replication").get("master_link_status") == "up" for r in replicas
        )

    def _wait(self, ready: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
        wait_until(ready, what, self.nodes, timeout_s)


def wait_replicated(primary: RedisNode, replicas: list[RedisNode], timeout_s: float = 30.0) -> None:
    """Wait until each of `replicas` replicates `primary` and has applied everything the
    primary had taken when this was called, whichever connections wrote it.

    Not `WAIT` from a connection of the test's own: WAIT counts the replicas that
    acknowledged the writes of the connection that sends it, and answers at once, with
    every connected replica, on a connection that wrote nothing."""
    offset = int(primary.client().info("replication")["master_repl_offset"])

    def applied(replica: RedisNode) -> bool:
        info = replica.client().info("replication")
        return (
            info.get("master_link_status") == "up"
            and (str(info.get("master_host")), info.get("master_port"))
            == (primary.ip, primary.port)
            and int(info.get("slave_repl_offset", -1)) >= offset
        )

    wait_until(
        lambda: all(applied(r) for r in replicas),
        f"the replicas to apply {primary.name}'s writes up to offset {offset}",
        [primary, *replicas],
        timeout_s,
    )


def wait_until(
    ready: Callable[[], bool], what: str, logs_of: list[RedisNode], timeout_s: float
) -> None:
    """Poll `ready` (Redis errors count as not yet) until it holds; on timeout, fail
    with the tail of each node's log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except sync_redis.RedisError:
            pass
        time.sleep(0.1)
    logs = "\n".join(f"--- {n.name}\n{n.log()[-1500:]}" for n in logs_of)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")

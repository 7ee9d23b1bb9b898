"""A network of hosts on one machine, for the multi-host tests: each host a network
namespace with its own address, joined by veth pairs to one bridge. The test process stays
in the root namespace, which holds the bridge's address, so it reaches every host as a
client on the network would. Links can be cut and restored; where the kernel has netem,
every link also gets a few milliseconds of delay."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0"
NEEDS = "root, iproute2 (`ip`, `tc`) and nginx"


class LabUnavailable(RuntimeError):
    """This machine cannot make the lab: the multi-host tests must fail, saying why."""


def run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabUnavailable(f"`{' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout


def check_machine() -> None:
    """Raise LabUnavailable naming what is missing."""
    missing = [tool for tool in ("ip", "tc", "nginx") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.insert(0, "root (network namespaces need CAP_NET_ADMIN)")
    if missing:
        raise LabUnavailable(
            f"the multi-host tests need {NEEDS}; missing: {', '.join(missing)}. "
            "`.ci/run` installs them with apt-get, as root"
        )


@dataclass
class Host:
    name: str
    ns: str
    ip: str
    link: str  # the veth end on the bridge: cutting it takes the host off the network
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command on this host."""
        return ("ip", "netns", "exec", self.ns)

    def popen(self, args: list[str], log: Path, **kwargs: object) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(  # type: ignore[call-overload]
                [*self.prefix, *args], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, **kwargs,
            )  # fmt: skip
        self.processes.append(proc)
        return proc  # type: ignore[no-any-return]

    def cut(self) -> None:
        """Take the host off the network: its peers' packets to it are lost, and its own."""
        run("ip", "link", "set", self.link, "down")

    def restore(self) -> None:
        run("ip", "link", "set", self.link, "up")

    def isolate_from(self, *others: Host) -> None:
        """Drop this host's packets to `others` (a partition between them alone: both stay
        on the network for everyone else)."""
        for other in others:
            run("ip", "-n", self.ns, "route", "add", "blackhole", f"{other.ip}/32")
            self.blocked.add(other.ip)

    def reconnect(self) -> None:
        for ip in sorted(self.blocked):
            run("ip", "-n", self.ns, "route", "del", "blackhole", f"{ip}/32")
        self.blocked.clear()


class Lab:
    def __init__(self, tag: str, *, subnet: str = SUBNET, delay_ms: float = 1.0) -> None:
        check_machine()
        self.tag = tag  # keeps names unique and short (interface names hold 15 bytes)
        self.subnet = subnet  # the first three bytes of a /24 of its own
        self.bridge = f"{tag}br"
        self.delay_ms = delay_ms
        self.hosts: list[Host] = []
        self.netem = False
        self._cleanup()
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{subnet}.1/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 10
        host = Host(name, f"{self.tag}-{name}", f"{self.subnet}.{n}", f"{self.tag}{n}r")
        inside = f"{self.tag}{n}h"
        run("ip", "netns", "add", host.ns)
        run("ip", "link", "add", host.link, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", inside, "netns", host.ns)
        run("ip", "link", "set", host.link, "master", self.bridge)
        run("ip", "link", "set", host.link, "up")
        run("ip", "-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", inside)
        run("ip", "-n", host.ns, "link", "set", inside, "up")
        run("ip", "-n", host.ns, "link", "set", "lo", "up")
        if self.delay_ms:
            self.netem = self._delay(host.ns, inside)
        self.hosts.append(host)
        return host

    def _delay(self, ns: str, dev: str) -> bool:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
             "delay", f"{self.delay_ms}ms"],
            capture_output=True, text=True,
        )  # fmt: skip
        return done.returncode == 0  # kernels built without netem take no delay

    def close(self) -> None:
        for host in self.hosts:
            for proc in host.processes:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        """Remove whatever a previous run with this tag left behind."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            ns = line.split()[0] if line.strip() else ""
            if ns.startswith(f"{self.tag}-"):
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                for pid in pids.stdout.split():
                    subprocess.run(["kill", "-9", pid], capture_output=True)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

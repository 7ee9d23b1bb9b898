"""Runs N copies of one Spool command as child processes: restarts a child that dies, and
passes SIGTERM and SIGINT on to all of them, so one command uses every core. Also what
every server process sets up before it serves (signals, the garbage collector)."""

from __future__ import annotations

import gc
import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def leave_sigint_to_the_parent() -> None:
    """In a child of a supervising command, before it runs: a terminal's Ctrl-C reaches
    the whole process group, and the parent stops its children itself (SIGTERM, in
    order), so they ignore SIGINT, even while the interpreter starts."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def tune_gc(thresholds: tuple[int, int, int] | None) -> None:
    """For a long-running server, once its code is imported and before it serves: move
    everything that exists now (modules, classes, settings) out of the collector's sight
    for good (`gc.freeze`), and make collections rarer (`thresholds`; CPython's default
    is (700, 10, 10)).

    A server holding thousands of open streams keeps millions of objects alive, and every
    object that outlives a few young collections (an event waiting on a Redis round trip,
    a stream's next token waiting on its rate) is promoted to the oldest generation, whose
    collections walk the whole heap: with the defaults, a worker holding 10,000 streams
    spent more than half its CPU in the collector, long enough to miss its lease renewals.
    With young collections rarer, nearly everything transient dies young, and the old
    generation is walked far less often. Memory is still freed by reference counting: only
    garbage cycles wait a little longer."""
    gc.collect()
    gc.freeze()
    if thresholds is not None:
        gc.set_threshold(*thresholds)


class StopSignal:
    """Notes SIGINT and SIGTERM, for a supervisor's loop to see."""

    def __init__(self) -> None:
        self.received = False
        signal.signal(signal.SIGINT, self._note)
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = True


def stop_children(children: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM to every child still running, last started first; each has `grace_s` to
    finish before it is killed."""
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in reversed(children):
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_group(argv: list[str], processes: int, *, env: dict[str, str], grace_s: float) -> int:
    """Run `argv` `processes` times until SIGTERM or SIGINT, replacing a copy that exits;
    then stop them all (`stop_children`)."""
    stop = StopSignal()

    def spawn(index: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env={**env, "SPOOL_PROCESS_INDEX": str(index)},
            preexec_fn=leave_sigint_to_the_parent,  # the group has one thread: safe here
        )

    children = [spawn(i) for i in range(processes)]
    restarts = [0] * processes
    try:
        while not stop.received:
            for index, child in enumerate(children):
                code = child.poll()
                if code is None or stop.received:
                    continue
                delay = RESTART_BACKOFF_S[min(restarts[index], len(RESTART_BACKOFF_S) - 1)]
                log.warning("process %d (pid %d) exited with %s; restarting in %.1fs",
                            index, child.pid, code, delay)  # fmt: skip
                time.sleep(delay)
                restarts[index] += 1
                children[index] = spawn(index)
            time.sleep(0.2)
        return 0
    finally:
        stop_children(children, grace_s)

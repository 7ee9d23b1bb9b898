"""Runs N copies of one Spool command as child processes: restarts a child that dies, and
passes SIGTERM and SIGINT on to all of them, so one command uses every core."""

from __future__ import annotations

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

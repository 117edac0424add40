"""The killable grading worker pool: math-verify in ``python -c`` worker processes, each pair under
a soft deadline in the worker (``setitimer``) and a hard one enforced from the parent (the worker
is killed and replaced), so one pathological pair costs its deadline and never the batch."""
from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
import weakref
from collections import deque
from multiprocessing.connection import Connection, wait
from typing import Callable

from common.progress import Progress
from grading.equivalence import math_verify_check


class _ItemDeadline(BaseException):
    """Raised by the worker's alarm; BaseException so math-verify's `except Exception` lets it by."""


def _worker_main(read_fd: int, write_fd: int) -> None:
    """Entry point of a grading worker process (see `WorkerPool._spawn`)."""
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    checker, timeout_s = conn_in.recv()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    math_verify_check("1", ("1",), None)  # import and warm up before reporting ready

    def on_alarm(signum, frame):
        raise _ItemDeadline()

    signal.signal(signal.SIGALRM, on_alarm)
    conn_out.send(("ready",))
    while True:
        try:
            chunk = conn_in.recv()
        except EOFError:  # the parent went away
            return
        if chunk is None:
            return
        for job_id, answer, variants, tail in chunk:
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, timeout_s)
                    result = checker(answer, variants, None, tail)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _ItemDeadline:
                result = (False, "timeout")
            except Exception:  # noqa: BLE001 - one bad pair must not stop the batch
                result = (False, "error")
            conn_out.send((job_id, bool(result[0]), str(result[1]), result[2] if len(result) > 2 else None))


# Workers are plain `python -c` processes talking pickles over two pipes. multiprocessing's spawn
# would re-import the caller's __main__ (breaking unguarded scripts and notebooks), and fork is
# unsafe once torch or polars have started threads.
_WORKER_CODE = ("import sys; from grading.pool import _worker_main; "
                "_worker_main(int(sys.argv[1]), int(sys.argv[2]))")


class _Slot:
    def __init__(self, proc: subprocess.Popen, send: Connection, recv: Connection):
        self.proc, self.send, self.recv = proc, send, recv
        self.ready = False
        self.started = time.monotonic()
        self.chunk: list = []
        self.pos = 0
        self.item_started = 0.0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.send.close()
        self.recv.close()


class WorkerPool:
    """Worker processes running `checker` with a hard per-item deadline enforced from here."""

    # Starting Python and importing sympy/math-verify takes a few seconds; longer means trouble.
    STARTUP_LIMIT_S = 120.0

    def __init__(self, workers: int, checker: Callable, timeout_s: float):
        self.workers, self.checker, self.timeout_s = workers, checker, timeout_s
        # The soft deadline in the worker fires at timeout_s; the hard one only catches workers
        # stuck where a signal cannot reach (C code), so give the soft one room to act first.
        self.hard_limit_s = timeout_s * 1.5 + 1.0
        self.slots: list[_Slot] = []
        self.slowest_s = 0.0     # the longest one item took, from being sent on to its result here
        self._finalizer = weakref.finalize(self, WorkerPool._shutdown, self.slots)

    def _spawn(self) -> _Slot:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # the child must import what we imported (evaluation, and the checker's module)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        try:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(to_child_r), str(from_child_w)],
                                    pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        slot = _Slot(proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False))
        slot.send.send((self.checker, self.timeout_s))
        return slot

    def _replace(self, slot: _Slot) -> None:
        slot.kill()
        self.slots[self.slots.index(slot)] = self._spawn()

    def run(self, jobs: list[tuple[int, str | None, tuple[str, ...], str | None]],
            progress: Progress | None = None) -> dict[int, tuple[bool, str]]:
        """Each job's ``(correct, method, ...)`` by its id; ``progress`` is advanced per result."""
        results: dict[int, tuple[bool, str]] = {}
        pending = deque(jobs)
        while len(self.slots) < min(self.workers, len(jobs)):
            self.slots.append(self._spawn())
        startup_failures = 0
        while len(results) < len(jobs):
            now = time.monotonic()
            for slot in self.slots:
                if slot.ready and not slot.chunk and pending:
                    # chunks amortise IPC; small enough to keep both workers busy to the end
                    size = max(1, min(32, math.ceil(len(pending) / (4 * len(self.slots)))))
                    slot.chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
                    slot.pos, slot.item_started = 0, now
                    try:
                        slot.send.send(slot.chunk)
                    except OSError:  # died while idle; the failed recv below requeues the chunk
                        pass
            ready = wait([s.recv for s in self.slots], timeout=0.05)
            for slot in list(self.slots):
                if slot.recv not in ready:
                    continue
                try:
                    msg = slot.recv.recv()
                except (EOFError, OSError):  # the worker died (segfault, OOM kill)
                    if not slot.ready:
                        startup_failures += 1
                        if startup_failures >= 3:
                            raise RuntimeError("grading workers keep dying during start-up "
                                               "(is math-verify importable?)") from None
                    elif slot.chunk:  # the item it was on gets "error", the rest go back
                        job = slot.chunk[slot.pos]
                        results[job[0]] = (False, "error")
                        pending.extendleft(reversed(slot.chunk[slot.pos + 1:]))
                    self._replace(slot)
                    continue
                if msg == ("ready",):
                    slot.ready = True
                    continue
                results[msg[0]] = msg[1:]
                slot.pos += 1
                done_at = time.monotonic()
                self.slowest_s = max(self.slowest_s, done_at - slot.item_started)
                slot.item_started = done_at
                if slot.pos >= len(slot.chunk):
                    slot.chunk = []
            now = time.monotonic()
            for slot in list(self.slots):
                if slot.chunk and now - slot.item_started > self.hard_limit_s:
                    job = slot.chunk[slot.pos]  # hung past every soft limit: kill it, move on
                    results[job[0]] = (False, "timeout")
                    self.slowest_s = max(self.slowest_s, now - slot.item_started)
                    pending.extendleft(reversed(slot.chunk[slot.pos + 1:]))
                    self._replace(slot)
                elif not slot.ready and now - slot.started > self.STARTUP_LIMIT_S:
                    raise RuntimeError(f"grading worker not ready after {self.STARTUP_LIMIT_S:.0f} s")
            if progress is not None and len(results) > progress.done:
                progress.update(len(results) - progress.done)
        return results

    @staticmethod
    def _shutdown(slots: list[_Slot]) -> None:
        for slot in slots:
            try:
                slot.send.send(None)
            except (OSError, ValueError):
                pass
        for slot in slots:
            try:
                slot.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            slot.kill()
        slots.clear()

    def close(self) -> None:
        self._finalizer()

"""`aihub serve --workers N`: N gateway processes on one port, and the supervisor that starts and stops them.

Each worker is `python -m gateway.workers` (gateway.server.serve with its own SO_REUSEPORT socket on
AIHUB_HOST:AIHUB_PORT: the kernel spreads new connections over the workers), with its own event loop, upstream
pools and its own coalescing Redis connection. The supervisor (the `serve` process) serves nothing itself.

Start: the workers one after the other, each telling the supervisor on a pipe once it accepts connections; a
worker that exits before that fails the start (exit status 1, e.g. the port is taken). While serving, a worker
that dies on its own is replaced (at most once a second per worker; a replacement that cannot start stops all).
Metrics are per process: a scrape of /metrics reaches one worker.

Stop (SIGINT or SIGTERM to the supervisor, Ctrl-C): SIGTERM to every worker; each stops accepting, finishes the
requests in flight within AIHUB_SHUTDOWN_GRACE_S, settles them and flushes its settles before it exits; the
supervisor waits for all of them (a worker still there after the grace period and a margin is killed) and exits
0. The workers run in their own sessions, so a terminal's Ctrl-C reaches the supervisor only and each worker
gets exactly one stop signal; a worker whose supervisor dies gets SIGTERM from the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from gateway.children import ChildNotReady, ReadyChild
from gateway.errors import ConfigError
from gateway.server import CANCELLED_WAIT_S, serve
from gateway.settings import ROOT

log = logging.getLogger("aihub.workers")
START_TIMEOUT_S = 60.0
RESTART_EVERY_S = 1.0


class Worker(ReadyChild):
    """One worker process (`python -m gateway.workers --ready-fd N`), killed by the kernel when the supervisor
    dies (gateway.children.die_with_parent, as every ReadyChild); `number` from 1."""

    def __init__(self, number: int, env: Mapping[str, str]) -> None:
        super().__init__(f"worker {number}", ["gateway.workers"], env, log=log, start_timeout_s=START_TIMEOUT_S)
        self.number = number

    def exited_cleanly(self, status: int) -> bool:
        """Status 0, or SIGTERM before it served (before Python could install a handler)."""
        return status == 0 or (status == -signal.SIGTERM and not self.ready)


def _stop_signals() -> threading.Event:
    stopping = threading.Event()

    def on_signal(sig: int, frame: object) -> None:
        if not stopping.is_set():
            log.info("%s: stopping the workers (requests in flight finish and are settled)",
                     signal.Signals(sig).name)
        stopping.set()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stopping


def supervise(count: int, grace_s: float, env: Mapping[str, str] | None = None) -> int:
    """Runs `count` workers until SIGINT/SIGTERM; 0 after a clean stop, 1 when a worker failed or was killed."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    environ = {**(os.environ if env is None else env)}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    stopping = _stop_signals()
    workers: list[Worker] = []
    clean = True
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        for number in range(1, count + 1):
            workers.append(Worker(number, environ))
            if not workers[-1].wait_ready(deadline, stopping):
                break
        else:
            log.info("%d workers serve: pids %s", count, ", ".join(str(w.pid) for w in workers))
        while not stopping.wait(0.2):
            for slot, worker in enumerate(workers):
                code = worker.proc.poll()
                if code is None or time.monotonic() - worker.started < RESTART_EVERY_S:
                    continue
                log.error("worker %d (pid %d) exited with status %s: starting another", worker.number, worker.pid,
                          code)
                workers[slot] = Worker(worker.number, environ)
                if workers[slot].wait_ready(time.monotonic() + START_TIMEOUT_S, stopping):
                    log.info("worker %d serves again: pid %d", worker.number, workers[slot].pid)
    except ChildNotReady as exc:
        log.error("%s", exc)
        clean = False
    finally:
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + grace_s + CANCELLED_WAIT_S + 10
        for worker in workers:
            clean = worker.wait(deadline - time.monotonic()) and clean
    return 0 if clean else 1


class _StoppedEarly(Exception):
    """SIGTERM/SIGINT before the server took over the signals (while importing, building the app)."""


def _stop_early(sig: int, frame: object) -> None:
    raise _StoppedEarly


def main(argv: Sequence[str] | None = None) -> int:
    """One worker: `python -m gateway.workers --ready-fd N` (started by `supervise`). A stop that comes while it
    starts ends it cleanly (exit 0): it had not accepted anything yet."""
    parser = argparse.ArgumentParser(prog="python -m gateway.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ready-fd", type=int, required=True, help="pipe to write one line to once serving")
    args = parser.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_early)      # the server replaces these while it runs
    try:
        serve(reuse_port=True, ready_fd=args.ready_fd)
    except _StoppedEarly:
        return 0
    except ConfigError as exc:     # the supervisor checked the configuration; the files may have changed since
        sys.stderr.write(f"aihub: worker: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

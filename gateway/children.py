"""A server child process that says on a pipe when it serves: started, waited for, stopped.

`aihub serve --workers N` (gateway.workers) and `make stack` (gateway.multi) start theirs as
`python -m MODULE ARGS... --ready-fd N`, in its own session (a terminal's Ctrl-C reaches the parent only), from the
project's root, stdin closed. Once it accepts connections the child writes one line to that pipe: "ready", then
optional words (the API process of `make stack`: the paths it serves). Imports nothing of the database.

A child does not outlive its parent: on Linux it asks the kernel for SIGTERM when the parent dies (prctl
PR_SET_PDEATHSIG, set between fork and exec; a parent that died before that makes it exit at once), so a
`kill -9` of `make stack` or of `aihub serve --workers N` still gives each child its normal graceful stop (a proxy
finishes and settles what is in flight, the worker drains) instead of leaving it serving and holding its port or
chDB directory. The signal follows the thread that started the child: start them from the main thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from gateway.settings import ROOT

READ_POLL_S = 0.2          # how often a wait for the ready line looks at `stopping`
PR_SET_PDEATHSIG = 1       # linux/prctl.h


class ChildNotReady(RuntimeError):
    """A child exited, or did not write its ready line by the deadline; the message names it and its pid."""


def wait_or_kill(proc: subprocess.Popen[bytes], timeout: float, label: str, log: logging.Logger) -> int | None:
    """Waits for a child to exit: its status, or None when it did not stop within `timeout` (then it is killed)."""
    try:
        return proc.wait(max(timeout, 0.1))
    except subprocess.TimeoutExpired:
        log.error("%s (pid %d) did not stop within %.0fs: killed", label, proc.pid, timeout)
        proc.kill()
        proc.wait(10)
        return None


def _prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), looked up in the parent: the child only calls it between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl      # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def die_with_parent(then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when the calling process (its parent) dies; when the parent already
    died before the request took effect, the child exits at once (status 1). `then` runs afterwards. Elsewhere
    than on Linux, only `then`."""
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:       # in the child, between fork and exec
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:          # the parent died before the signal was armed: nobody sends it
                os._exit(1)
        if then is not None:
            then()
    return preexec


class ReadyChild:
    """One child process and the read end of the pipe it writes its ready line to.

    `name` names it in logs and errors ("worker 2", "proxy 1"); `log` is the parent's logger; `start_timeout_s`
    is the start-up time the parent allows, named in the error when the deadline passes; `preexec_fn` runs in the
    child between fork and exec, after its parent-death signal is set (`die_with_parent`). After `wait_ready`:
    `ready` (True once it served) and `ready_words` (the words after "ready"). `started`: time.monotonic() when it
    was started."""

    def __init__(self, name: str, command: Sequence[str], env: Mapping[str, str], *, log: logging.Logger,
                 start_timeout_s: float, preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name
        self.log = log
        self.start_timeout_s = start_timeout_s
        read_end, write_end = os.pipe()
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", *command, "--ready-fd", str(write_end)],
                                         env=dict(env), cwd=ROOT, stdin=subprocess.DEVNULL, pass_fds=(write_end,),
                                         start_new_session=True,
                                         preexec_fn=die_with_parent(preexec_fn))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.ready_fd = read_end
        self.started = time.monotonic()
        self.ready = False
        self.ready_words: list[str] = []

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, deadline: float, stopping: threading.Event) -> bool:
        """True once the child wrote its ready line; False when `stopping` was set meanwhile. ChildNotReady when it
        exits first or `deadline` (time.monotonic()) passes. The pipe is closed in every case."""
        try:
            data = b""
            with selectors.DefaultSelector() as selector:       # poll/epoll: any fd number (select: < 1024)
                selector.register(self.ready_fd, selectors.EVENT_READ)
                while not data.endswith(b"\n"):
                    if stopping.is_set():
                        return False
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ChildNotReady(f"{self.name} (pid {self.pid}) did not start within "
                                            f"{self.start_timeout_s:.0f}s")
                    if selector.select(min(READ_POLL_S, remaining)):
                        chunk = os.read(self.ready_fd, 4096)
                        if not chunk:
                            raise ChildNotReady(f"{self.name} (pid {self.pid}) exited with status "
                                                f"{self.proc.wait()} before it served (its log is above)")
                        data += chunk
            self.ready = True
            self.ready_words = data.decode().split()[1:]
            return True
        finally:
            self.close_pipe()

    def close_pipe(self) -> None:
        """Closes the read end of the ready pipe (idempotent)."""
        if self.ready_fd >= 0:
            os.close(self.ready_fd)
            self.ready_fd = -1

    def terminate(self) -> None:
        """SIGTERM, unless it exited already."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def exited_cleanly(self, status: int) -> bool:
        """Whether exit status `status` is a clean stop: 0 here."""
        return status == 0

    def wait(self, timeout: float) -> bool:
        """Waits for it to exit (killed after `timeout` s); True when it stopped by itself and `exited_cleanly`,
        else False (an unclean status is logged)."""
        try:
            code = wait_or_kill(self.proc, timeout, self.name, self.log)
        finally:
            self.close_pipe()
        if code is None:
            return False
        clean = self.exited_cleanly(code)
        if not clean:
            self.log.error("%s (pid %d) exited with status %d", self.name, self.pid, code)
        return clean

"""A child with a ready pipe (gateway/children.py): its ready line, a child that exits or stays silent, stop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gateway.children import ChildNotReady, ReadyChild
from gateway.settings import ROOT
from gateway.up_lock import is_running, process

log = logging.getLogger("tests.children")
Start = Callable[..., ReadyChild]     # (mode, start_timeout_s=30.0): a started tests.gateway.ready_child


@pytest.fixture
def start() -> Iterator[Start]:
    started: list[ReadyChild] = []

    def start(mode: str, start_timeout_s: float = 30.0) -> ReadyChild:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = ReadyChild(f"child {mode}", ["tests.gateway.ready_child", mode], env, log=log,
                           start_timeout_s=start_timeout_s)
        started.append(child)
        return child
    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        child.close_pipe()


def test_ready_line_then_a_clean_stop(start: Start) -> None:
    child = start("ready")
    assert child.wait_ready(time.monotonic() + 30, threading.Event()) is True
    assert child.ready and child.ready_words == ["a", "b"] and child.ready_fd == -1
    child.terminate()
    assert child.wait(10) is True
    child.terminate()                                      # exited already: nothing to signal


def test_a_child_that_exits_first(start: Start) -> None:
    child = start("exit")
    with pytest.raises(ChildNotReady, match=rf"^child exit \(pid {child.pid}\) exited with status 3 before it "
                                            r"served \(its log is above\)$"):
        child.wait_ready(time.monotonic() + 30, threading.Event())
    assert not child.ready and child.ready_fd == -1


def test_a_child_that_does_not_start_in_time(start: Start) -> None:
    child = start("silent", start_timeout_s=12)
    with pytest.raises(ChildNotReady, match=rf"^child silent \(pid {child.pid}\) did not start within 12s$"):
        child.wait_ready(time.monotonic() + 0.5, threading.Event())


def test_a_stop_while_waiting(start: Start) -> None:
    child = start("silent")
    stopping = threading.Event()
    stopping.set()
    assert child.wait_ready(time.monotonic() + 30, stopping) is False
    assert not child.ready and child.ready_fd == -1


def test_a_child_that_does_not_stop_is_killed(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    child = start("stubborn")
    assert child.wait_ready(time.monotonic() + 30, threading.Event())
    child.terminate()
    with caplog.at_level(logging.ERROR, logger="tests.children"):
        assert child.wait(0.3) is False
    assert child.proc.returncode == -signal.SIGKILL
    assert f"child stubborn (pid {child.pid}) did not stop within 0s: killed" in caplog.text


def test_an_unclean_status_is_logged(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    child = start("exit")
    with caplog.at_level(logging.ERROR, logger="tests.children"):
        assert child.wait(10) is False
    assert f"child exit (pid {child.pid}) exited with status 3" in caplog.text


PARENT = """
import logging, os, sys, threading, time
from gateway.children import ReadyChild
child = ReadyChild("child", ["tests.gateway.ready_child", "ready"], os.environ, log=logging.getLogger(),
                   start_timeout_s=30)
child.wait_ready(time.monotonic() + 30, threading.Event())
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    """kill -9 of the parent (`make stack`, `aihub serve --workers N`): the kernel sends the child SIGTERM."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen([sys.executable, "-c", PARENT], env=env, cwd=ROOT, stdout=subprocess.PIPE) as parent:
        try:
            assert parent.stdout is not None
            child = process(int(parent.stdout.readline()))
            assert child is not None
        finally:
            parent.kill()
            parent.wait(10)
    deadline = time.monotonic() + 10
    while is_running(child):
        assert time.monotonic() < deadline, f"child pid {child.pid} outlived its parent"
        time.sleep(0.05)

"""A child for tests/gateway/test_children.py: `python -m tests.gateway.ready_child MODE --ready-fd N`.

MODE: ready (writes "ready a b", exits 0 on SIGTERM), exit (exits 3 at once), silent (never writes), stubborn
(writes "ready", ignores SIGTERM)."""

from __future__ import annotations

import os
import signal
import sys
import time


def main(mode: str, ready_fd: int) -> int:
    if mode == "exit":
        return 3
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode in ("ready", "stubborn"):
        os.write(ready_fd, b"ready a b\n" if mode == "ready" else b"ready\n")
        os.close(ready_fd)                 # silent: kept open, as a server that is still starting keeps it
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[3])))

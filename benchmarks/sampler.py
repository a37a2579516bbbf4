"""A tiny statistical profiler: `python -m benchmarks.sampler OUT.json -m module args...`.

SIGPROF fires every millisecond of CPU time used by the process (in practice every kernel tick: 4 ms at
HZ=250, which is why the CPU time is recorded too); the handler records the Python stack of the main thread.
Far less distortion than cProfile on a hot asyncio path (no per-call hook). Time spent in C (uvloop,
httptools, syscalls) is charged to the Python frame that runs next. At exit, OUT.json gets
{"samples": N, "cpu_s": process CPU seconds, "self": {function: n}, "inclusive": {function: n}}.
"""

from __future__ import annotations

import collections
import runpy
import signal
import sys
import time
from pathlib import Path
from types import FrameType

import orjson

INTERVAL_S = 0.001
stacks: collections.Counter[tuple[str, ...]] = collections.Counter()


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"


def _sample(signum: int, frame: FrameType | None) -> None:
    stack: list[str] = []
    while frame is not None:
        stack.append(_where(frame))
        frame = frame.f_back
    stacks[tuple(stack)] += 1


def summary(cpu_s: float) -> dict[str, object]:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, n in stacks.items():
        if stack:
            own[stack[0]] += n
        for where in set(stack):
            inclusive[where] += n
    return {"samples": sum(stacks.values()), "cpu_s": cpu_s, "self": dict(own.most_common()),
            "inclusive": dict(inclusive.most_common())}


def main() -> None:
    out, flag, module, *rest = sys.argv[1:]
    if flag != "-m":
        raise SystemExit(__doc__)
    sys.argv = [module, *rest]
    started = time.process_time()
    signal.signal(signal.SIGPROF, _sample)
    signal.setitimer(signal.ITIMER_PROF, INTERVAL_S, INTERVAL_S)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        Path(out).write_bytes(orjson.dumps(summary(time.process_time() - started)))


if __name__ == "__main__":
    main()

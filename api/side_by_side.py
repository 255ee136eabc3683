"""Long CLI jobs as several processes side by side (``--workers N``).

On a CPU, one process per share of the cores keeps them busier than one
process whose every operation is split across all of them; on a GPU, several
small processes keep the device busy between one's kernels. Each command runs
``loramint`` again on its share of the work, with its share of the CPU threads
(``OMP_NUM_THREADS``); at most ``workers`` run at once, the next starting when
one ends. A command that fails stops new ones from starting; those running
finish, and the caller reports which failed. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass


@dataclass(frozen=True)
class Ended:
    name: str  # what the command did, for messages
    code: int | None  # None: never started (an earlier command failed)
    output: str  # its stdout and stderr when captured, else ""


def threads_each(workers: int) -> int:
    """Each process's share of this process's CPU threads (at least one)."""
    import torch

    return max(1, torch.get_num_threads() // workers)


def run(
    commands: Sequence[tuple[str, list[str]]],
    workers: int,
    *,
    capture: bool,
    on_end: Callable[[Ended], None] | None = None,
) -> list[Ended]:
    """Run each ``(name, loramint arguments)`` of ``commands``, ``workers`` at a time.
    ``capture=False`` lets their output through as it comes (long parts that report
    progress); ``capture=True`` keeps it for ``Ended.output`` (one line per command
    is then the caller's to print, from ``on_end``)."""
    threads = str(threads_each(workers))
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    running: set[subprocess.Popen[str]] = set()
    lock = threading.Lock()
    failed = threading.Event()
    stopping = threading.Event()

    def one(name: str, args: list[str]) -> Ended:
        with lock:
            if failed.is_set() or stopping.is_set():
                return Ended(name, None, "")
            pipe = subprocess.PIPE if capture else None
            proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", *args], env=env, text=True,
                stdout=pipe, stderr=subprocess.STDOUT if capture else None,
            )  # fmt: skip
            running.add(proc)
        output, _ = proc.communicate()
        with lock:
            running.discard(proc)
        ended = Ended(name, proc.returncode, output or "")
        if proc.returncode != 0:
            failed.set()
        if on_end:
            on_end(ended)
        return ended

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(one, name, args) for name, args in commands]
        return [f.result() for f in futures]
    except BaseException:  # Ctrl-C: stop what runs, start nothing more
        stopping.set()
        with lock:
            for proc in running:
                proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""bench/load.py's server CPU figure counts the server's worker processes too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.load import tree_cpu_seconds

# spins for 0.6 s of CPU, then waits to be read
CHILD = """
import time
end = time.process_time() + 0.6
while time.process_time() < end:
    pass
time.sleep(60)
"""
# starts CHILD, then does the same itself
PARENT = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {CHILD!r}])\n{CHILD}"


def test_the_cpu_of_a_process_and_its_children_is_counted() -> None:
    proc = subprocess.Popen([sys.executable, "-c", PARENT], start_new_session=True)
    try:
        used, deadline = 0.0, time.monotonic() + 60
        while used < 1.1 and time.monotonic() < deadline:  # the parent alone reaches ~0.7
            time.sleep(0.1)
            used = tree_cpu_seconds(proc.pid) or 0.0
        assert used >= 1.1
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert tree_cpu_seconds(proc.pid) is None

"""Run the robustgan CLI, but SIGKILL this process halfway through writing the N-th
checkpoint (the temp file holds half the bytes). Used by test_reliability.py:

    python tests/crash_during_write.py N train --out RUN ...
"""

import os
import signal
import sys

import robustgan.runs as runs

target = int(sys.argv.pop(1))
real_write, calls = runs.atomic_write, 0


def torn_write(path, payload):
    global calls
    if path.name == runs.CHECKPOINT:
        calls += 1
        if calls == target:
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as handle:
                handle.write(payload[: len(payload) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, payload)


runs.atomic_write = torn_write

from robustgan.cli import main  # noqa: E402

sys.argv[0] = "robustgan"
main()

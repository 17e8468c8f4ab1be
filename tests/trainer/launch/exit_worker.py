"""A torchrun worker for the exit-code tests: rank ``FAIL_RANK`` fails its own way, the others wait to be stopped.

``FAIL_HOW``: ``code:N`` (exit N after recording the error like ``kubetune-train`` does), ``raise`` (an uncaught
exception: exit 1), ``signal:N`` (killed by signal N).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from kubetune.trainer.distributed import record_failure
from kubetune.trainer.errors import TrainerError


def main() -> int:
    rank = int(os.environ["RANK"])
    how = os.environ["FAIL_HOW"]
    if rank != int(os.environ.get("FAIL_RANK", "0")):
        threading.Event().wait()  # until the agent stops this worker (SIGTERM) because another one failed
        return 0
    if how.startswith("code:"):
        error = TrainerError(f"rank {rank} gives up on purpose")
        error.exit_code = int(how.removeprefix("code:"))
        record_failure(error)
        return error.exit_code
    if how.startswith("signal:"):
        os.kill(os.getpid(), int(how.removeprefix("signal:")))
        signal.pause()
    raise RuntimeError("an uncaught crash")


if __name__ == "__main__":
    sys.exit(main())

"""`kubetune-train --config trainer.json`: the entry point of a training pod.

Exit codes: 0 done, 3 bad config, 4 bad data, 5 diverged (the divergence guard used up
spec.training.guard.maxRollbacks; all three non-retryable for the Job's podFailurePolicy), 75 stalled
(the hang watchdog: stacks dumped, retried), 143 preempted (checkpoint saved), 1 anything else. The reason goes to
/dev/termination-log so the operator can show it in the FineTuneJob's status.

With several processes per pod this process becomes torchrun's launcher
(:func:`kubetune.trainer.distributed.relaunch`): each worker records its failure in torchrun's
error file and exits with its own code, and the launcher exits with the code of the worker that
decided the failure (a 3 or 4 from any rank first), so the pod's code is the worker's.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from kubetune.api.redact import redact
from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.errors import TERMINATION_LOG, TrainerError, write_termination_message  # noqa: F401
from kubetune.trainer.logging import get_logger, setup

log = get_logger("kubetune.trainer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-train", description="Run one kubetune training job.")
    parser.add_argument("--config", required=True, help="trainer.json written by the operator or `kubetune run`")
    args = parser.parse_args(argv)
    setup(os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    from kubetune.trainer.distributed import is_worker, last_failure, launch_plan, record_failure, relaunch

    plan = launch_plan()
    if plan.needs_launcher and not is_worker():
        log.info("launching %d x %d workers (node %d)", plan.nnodes, plan.nproc_per_node, plan.node_rank)
        code = relaunch(plan, ["--config", args.config])
        failure = last_failure()
        if failure:
            write_termination_message(f"rank {failure['rank']}: {failure['message']}")
        return code
    try:
        config = TrainerConfig.from_file(args.config)
        from kubetune.trainer.callbacks.telemetry import Telemetry
        from kubetune.trainer.runner import run

        linger = float(os.environ.get("KUBETUNE_METRICS_LINGER_SECONDS", "20"))  # last scrape sees done/failed
        with Telemetry(config, linger_seconds=linger) as telemetry:
            result = run(config, callbacks=telemetry.callbacks, on_phase=telemetry.on_phase)
        evaluated = f"\n{result.evaluation.termination_lines()}" if result.evaluation is not None else ""
        write_termination_message(f"succeeded: {result.output_uri}{evaluated}")
        return 0
    except TrainerError as exc:
        log.error("%s", exc)
        write_termination_message(getattr(exc, "termination", None) or str(exc))
        record_failure(exc)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the pod must say why it died
        print(redact(traceback.format_exc()), file=sys.stderr, end="")  # the pod log may become the status
        write_termination_message(f"{type(exc).__name__}: {exc}")
        record_failure(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

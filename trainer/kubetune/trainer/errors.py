"""Trainer errors that map to exit codes the operator understands."""

from __future__ import annotations

from kubetune.api.conditions import (
    EXIT_CONFIG_ERROR,
    EXIT_DATA_ERROR,
    EXIT_DIVERGED,
    EXIT_GATE_FAILED,
    EXIT_STALLED,
)
from kubetune.api.redact import redact


class TrainerError(Exception):
    """A failure that retrying cannot fix; carries the exit code for the pod's podFailurePolicy.

    Its message is redacted once, here (URL user-info, signature/token query parameters), so no
    error, log line or termination message built from it can echo a credential.
    """

    exit_code = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(TrainerError):
    """The spec points at something that does not exist or cannot be used (a missing file, a bad URI)."""

    exit_code = EXIT_CONFIG_ERROR


class DataError(TrainerError):
    """The data cannot be trained on (no valid rows, wrong shape for the stage)."""

    exit_code = EXIT_DATA_ERROR


class Diverged(TrainerError):
    """The divergence guard used up ``spec.training.guard.maxRollbacks``; retrying the same run would diverge again."""

    exit_code = EXIT_DIVERGED


class GateFailed(TrainerError):
    """The trained model did not meet ``spec.evaluation.gate``: the artifact is published unpromoted (not retried).

    ``termination`` is the pod's termination message: the verdict and the result as JSON for status.evaluation."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, message: str, *, termination: str = "") -> None:
        super().__init__(message)
        self.termination = termination or str(self)


class Stalled(TrainerError):
    """The hang watchdog saw no optimizer step for ``spec.training.stallTimeoutSeconds`` (retried by the Job)."""

    exit_code = EXIT_STALLED


TERMINATION_LOG = "/dev/termination-log"  # the Job's terminationMessagePath; KUBETUNE_TERMINATION_LOG overrides


def write_termination_message(message: str) -> None:
    """The pod's termination message (the operator shows it in status): redacted, the last 4,000 characters."""
    import os
    from pathlib import Path

    from kubetune.api.redact import redact

    path = Path(os.environ.get("KUBETUNE_TERMINATION_LOG", TERMINATION_LOG))
    try:
        path.write_text(redact(message)[-4000:], encoding="utf-8")
    except OSError:
        pass

"""Trainer errors that map to exit codes the operator understands."""

from __future__ import annotations

from kubetune.api.conditions import EXIT_CONFIG_ERROR, EXIT_DATA_ERROR


class TrainerError(Exception):
    """A failure that retrying cannot fix; carries the exit code for the pod's podFailurePolicy."""

    exit_code = 1


class ConfigError(TrainerError):
    """The spec points at something that does not exist or cannot be used (a missing file, a bad URI)."""

    exit_code = EXIT_CONFIG_ERROR


class DataError(TrainerError):
    """The data cannot be trained on (no valid rows, wrong shape for the stage)."""

    exit_code = EXIT_DATA_ERROR

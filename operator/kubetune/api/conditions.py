"""Condition types, phases and reason constants written into ``FineTuneJob.status``.

Conditions follow the Kubernetes / kstatus convention so Argo CD and Flux can read
health: ``Ready`` is the summary, ``Reconciling`` and ``Stalled`` are abnormal-true.
"""

from __future__ import annotations

import enum


class Phase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(str, enum.Enum):
    READY = "Ready"
    VALIDATED = "Validated"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    WAITING = "Waiting"


class Reason:
    """Machine-readable reasons (CamelCase, as Kubernetes expects)."""

    VALID = "SpecValid"
    INVALID_SPEC = "InvalidSpec"
    SPEC_CHANGED = "SpecChangedAfterStart"
    SECRET_MISSING = "SecretMissing"
    WAITING_FOR_JOB = "WaitingForUpstreamJob"
    UPSTREAM_FAILED = "UpstreamJobFailed"
    CREATED = "ChildrenCreated"
    QUEUED = "Queued"
    POD_PENDING = "PodsPending"
    TRAINING = "Training"
    COMPLETED = "TrainingCompleted"
    JOB_FAILED = "JobFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    SUSPENDED = "SuspendedByUser"
    DOES_NOT_FIT = "DoesNotFitGPU"


# Exit codes of ``kubetune-train`` that mean "bad config / bad data": retrying cannot help,
# so the Job's podFailurePolicy fails the Job at once on them.
EXIT_CONFIG_ERROR = 3
EXIT_DATA_ERROR = 4
NON_RETRYABLE_EXIT_CODES = (EXIT_CONFIG_ERROR, EXIT_DATA_ERROR)

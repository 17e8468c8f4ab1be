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
    # the divergence guard rolled training back (spec.training.guard); True until `window` good steps follow
    DIVERGED = "Diverged"


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
    # the API server refused a child (quota, admission, an invalid field): Stalled until the spec changes
    CHILD_REJECTED = "ChildRejected"
    # children of an earlier FineTuneJob of the same name, not yet deleted by the garbage collector
    PREVIOUS_CHILDREN = "WaitingForPreviousChildren"
    # the operator could not process the spec at all (an exception on its decision path)
    UNPROCESSABLE = "UnprocessableSpec"
    # a training pod that does not start or is killed: the cause, from the pod's status or its Events
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"
    MOUNT_FAILED = "MountFailed"
    OOM_KILLED = "OOMKilled"
    # the Job is suspended by another controller (Kueue): kubetune leaves suspend to it
    SUSPENDED_BY_QUEUE = "QueueManaged"
    # the divergence guard (spec.training.guard): a rollback happened / training recovered after it
    ROLLED_BACK = "RolledBack"
    RECOVERED = "Recovered"
    # the hang watchdog ended a trainer pod (exit 75): the Job retries it
    TRAINER_STALLED = "TrainerStalled"
    # the evaluation gate (spec.evaluation): the trained model was promoted / did not meet a gate condition
    EVALUATION_PASSED = "EvaluationPassed"
    GATE_FAILED = "EvaluationGateFailed"


# Exit codes of ``kubetune-train`` that mean "bad config / bad data": retrying cannot help,
# so the Job's podFailurePolicy fails the Job at once on them.
EXIT_CONFIG_ERROR = 3
EXIT_DATA_ERROR = 4
# the divergence guard used up spec.training.guard.maxRollbacks: the same data and settings would diverge again
EXIT_DIVERGED = 5
# the evaluation gate (spec.evaluation) failed: the artifact is kept unpromoted; the same run would fail it again
EXIT_GATE_FAILED = 6
NON_RETRYABLE_EXIT_CODES = (EXIT_CONFIG_ERROR, EXIT_DATA_ERROR, EXIT_DIVERGED, EXIT_GATE_FAILED)
# the hang watchdog found no optimizer step for spec.training.stallTimeoutSeconds: stacks dumped, the Job retries
# (the pod resumes from the last checkpoint); deliberately not in NON_RETRYABLE_EXIT_CODES
EXIT_STALLED = 75

# the trainer's termination message carries the evaluation result as one line: this prefix, then compact JSON
# (status.evaluation's shape); the operator reads it when the Job ends, succeeded or failed by the gate
EVALUATION_LINE = "evaluation: "

"""Prometheus metric names shared by the trainer (which exports them on rank 0) and the
operator (which pulls them into ``FineTuneJob.status.progress``) and the dashboard.

Names carry the ``kubetune_`` prefix and their unit. Trainer metrics are labelled with
``TRAINER_LABELS``.
"""

from __future__ import annotations

import math

TRAINER_LABELS = ("job", "namespace", "stage", "method", "model")
DEFAULT_METRICS_PORT = 9400  # trainer pods
OPERATOR_METRICS_PORT = 8080

# trainer gauges (one sample per job)
TRAIN_LOSS = "kubetune_train_loss"
EVAL_LOSS = "kubetune_eval_loss"
LEARNING_RATE = "kubetune_train_learning_rate"
GRAD_NORM = "kubetune_train_grad_norm"
EPOCH = "kubetune_train_epoch"
GLOBAL_STEP = "kubetune_train_global_step"
TOTAL_STEPS = "kubetune_train_total_steps"
PROGRESS_RATIO = "kubetune_train_progress_ratio"
ETA_SECONDS = "kubetune_train_eta_seconds"
TOKENS_PER_SECOND = "kubetune_train_tokens_per_second"
SAMPLES_PER_SECOND = "kubetune_train_samples_per_second"
TOKENS_TOTAL = "kubetune_train_tokens_total"  # counter
MEMORY_ALLOCATED_BYTES = "kubetune_device_memory_allocated_bytes"  # label: device
MEMORY_RESERVED_BYTES = "kubetune_device_memory_reserved_bytes"
MFU_RATIO = "kubetune_train_mfu_ratio"
CHECKPOINT_SECONDS = "kubetune_checkpoint_duration_seconds"  # histogram
UPLOAD_SECONDS = "kubetune_upload_duration_seconds"  # histogram
MEMORY_ESTIMATE_BYTES = "kubetune_memory_estimate_bytes"  # per-GPU estimate from the model's real config
DATASET_ROWS = "kubetune_dataset_rows"  # labels: dataset, state (read, valid, dropped, truncated)
CHECKPOINT_LAST_STEP = "kubetune_checkpoint_last_step"  # step of the newest checkpoint written
ROLLBACKS_TOTAL = "kubetune_train_rollbacks_total"  # counter: divergence-guard rollbacks (spec.training.guard)
DIVERGED = "kubetune_train_diverged"  # label: reason (nan_loss, nan_grad_norm, loss_spike); 1 while a rollback lasts
GUARD_REASONS = ("nan_loss", "nan_grad_norm", "loss_spike")  # the divergence guard's reasons (DIVERGED's label)
PHASE = "kubetune_trainer_phase"  # label: phase; 1 for the current phase, 0 otherwise
PHASES = ("fetching_model", "loading_data", "training", "saving", "evaluating", "uploading", "done", "failed")

# Which trainer gauge feeds which status.progress field (the operator's progress poller).
PROGRESS_FIELDS = {
    GLOBAL_STEP: "step",
    TOTAL_STEPS: "totalSteps",
    EPOCH: "epoch",
    TRAIN_LOSS: "loss",
    EVAL_LOSS: "evalLoss",
    LEARNING_RATE: "learningRate",
    TOKENS_PER_SECOND: "tokensPerSecond",
    ETA_SECONDS: "etaSeconds",
}

# Trainer gauges the operator turns into other status fields (datasets, memoryEstimateGib, lastCheckpoint).
STATUS_FACTS = (MEMORY_ESTIMATE_BYTES, DATASET_ROWS, CHECKPOINT_LAST_STEP, ROLLBACKS_TOTAL, DIVERGED)

# operator metrics
OPERATOR_JOBS = "kubetune_operator_finetunejobs"  # gauge, label: phase
OPERATOR_RECONCILE_SECONDS = "kubetune_operator_reconcile_duration_seconds"  # histogram, label: handler
OPERATOR_API_ERRORS = "kubetune_operator_api_errors_total"  # counter, label: verb, code
OPERATOR_PROGRESS_POLL_FAILURES = "kubetune_operator_progress_poll_failures_total"  # counter
# per FineTuneJob (labels: namespace, job, gpu_type), from status.cost
JOB_GPU_SECONDS = "kubetune_job_gpu_seconds_total"  # counter
JOB_NODE_SECONDS = "kubetune_job_node_seconds_total"  # counter
JOB_ESTIMATED_COST = "kubetune_job_estimated_cost"  # gauge, price-table units; absent without a price
JOB_TOKENS_PER_GPU_HOUR = "kubetune_job_tokens_per_gpu_hour"  # gauge
# per FineTuneJob, from status.evaluation (spec.evaluation)
JOB_EVALUATION = "kubetune_job_evaluation"  # gauge, labels: namespace, job, model (base, trained), metric
JOB_PROMOTED = "kubetune_job_promoted"  # gauge, labels: namespace, job; 1 promoted, 0 failed the gate
EVALUATION_METRICS = {
    "evalLoss": "eval_loss",
    "perplexity": "perplexity",
    "ruleScore": "rule_score",
    "reward": "reward",
}


def format_duration(seconds: float | None) -> str:
    """How durations and ETAs read everywhere (live view, ``status.progress.eta``): 1h02m, 4m05s, 12s; '?' unknown."""
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"

"""TrainerCallbacks of a run: telemetry (Prometheus, the live view, trackers), the divergence guard, the watchdog."""

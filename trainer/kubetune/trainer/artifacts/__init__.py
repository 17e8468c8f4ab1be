"""Artifacts of a run: adapter/model folder, curves, and manifest.json (written last)."""

"""Test harness: a Kubernetes API emulator (kmock-based) and a Job-controller/kubelet simulator.

Test fixtures, not shipped code. See :mod:`tests.harness.emulator` and :mod:`tests.harness.cluster`.
"""

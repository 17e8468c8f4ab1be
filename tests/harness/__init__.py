"""Test harness: a Kubernetes API emulator (kmock-based) and a Job-controller/kubelet simulator for the fast
suites, and a real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok; Kueue
on demand) with a process kubelet for tests/k8s.

Test fixtures, not shipped code. See :mod:`tests.harness.emulator`, :mod:`tests.harness.cluster`,
:mod:`tests.harness.realcluster`, :mod:`tests.harness.realkueue` and :mod:`tests.harness.processkubelet`.
"""

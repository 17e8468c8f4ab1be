"""Thin kopf handlers. :func:`register` binds them to a registry with the operator's settings."""

from kubetune.operator.handlers.finetunejob import register

__all__ = ["register"]

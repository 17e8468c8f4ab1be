"""``python -m kubetune.operator`` = ``kubetune operator``: run the kopf operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from kubetune.operator.settings import OperatorSettings, add_arguments, from_args


class PortUnavailable(RuntimeError):
    """A port the operator serves on is taken (or not allowed)."""


async def operate(op: OperatorSettings, **kwargs: object) -> None:
    """Run until cancelled or stopped (``stop_flag``/``ready_flag`` pass through to kopf)."""
    import kopf

    from kubetune.operator import metrics
    from kubetune.operator.handlers import register

    try:  # before kopf: a port that is taken is one line and exit 1, not a startup kopf retries forever
        metrics.serve(op.metrics_port)
    except OSError as exc:
        raise PortUnavailable(f"--metrics-port {op.metrics_port}: cannot listen ({exc.strerror or exc})") from None
    if op.health_port:  # kopf's liveness server binds it later, inside its own tasks: check it is free now
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("0.0.0.0", op.health_port))
            except OSError as exc:
                raise PortUnavailable(
                    f"--health-port {op.health_port}: cannot listen ({exc.strerror or exc})"
                ) from None
    registry = kopf.OperatorRegistry()
    register(op, registry)
    liveness = f"http://0.0.0.0:{op.health_port}/healthz" if op.health_port else None
    await kopf.operator(
        registry=registry,
        standalone=op.standalone,
        peering_name=None if op.standalone else op.peering,
        namespaces=op.namespaces,
        clusterwide=not op.namespaces,
        liveness_endpoint=liveness,
        **kwargs,  # type: ignore[arg-type]
    )


def run_operator(op: OperatorSettings) -> int:
    import kopf

    kopf.configure(verbose=False, log_format=kopf.LogFormat.PLAIN)
    logging.getLogger("kubetune").setLevel(logging.INFO)
    try:
        asyncio.run(operate(op))
    except PortUnavailable as exc:
        print(
            f"kubetune operator: {exc}; choose a free port (chart values operator.metricsPort/healthPort)",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.operator", description=__doc__)
    add_arguments(parser)
    return run_operator(from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

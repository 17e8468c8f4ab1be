"""``python -m kubetune.operator`` = ``kubetune operator``: run the kopf operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from kubetune.operator.settings import OperatorSettings, add_arguments, from_args


async def operate(op: OperatorSettings, **kwargs: object) -> None:
    """Run until cancelled or stopped (``stop_flag``/``ready_flag`` pass through to kopf)."""
    import kopf

    from kubetune.operator.handlers import register

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
    asyncio.run(operate(op))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.operator", description=__doc__)
    add_arguments(parser)
    return run_operator(from_args(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

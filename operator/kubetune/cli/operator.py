"""`kubetune operator` (run the kopf operator) and `kubetune render FILE` (print the children)."""

from __future__ import annotations

import argparse
import sys

from kubetune.cli.registry import command
from kubetune.cli.registry import print_error as _err
from kubetune.operator import settings as op_settings


def _render_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML file")
    p.add_argument(
        "--namespace", "-n", default=None, help="namespace of the FineTuneJob (default: its own or default)"
    )
    p.add_argument(
        "--trainer-image", default=op_settings.DEFAULT_IMAGE, metavar="IMAGE", help="operator default image"
    )
    p.add_argument("--default-output-uri", default=None, metavar="URI", help="operator default output base")
    p.add_argument(
        "--gpu-resource", default=op_settings.DEFAULT_GPU_RESOURCE, metavar="NAME", help="GPU resource name"
    )


@command("render", "Print the ConfigMap, Service and Job the operator would create for a FineTuneJob.", _render_args)
def render(args: argparse.Namespace) -> int:
    from kubetune.api.validation import InvalidFineTuneJob, load_jobs
    from kubetune.operator.manifests import BuildOptions, MissingOutput, build_all, to_yaml

    try:
        jobs = load_jobs(args.file)
    except InvalidFineTuneJob as exc:
        _err(str(exc))
        return 1
    options = BuildOptions(
        trainer_image=args.trainer_image, gpu_resource=args.gpu_resource, default_output_uri=args.default_output_uri
    )
    objs = []
    for job in jobs:
        if args.namespace:
            job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": args.namespace})})
        try:
            objs += build_all(job, options)
        except MissingOutput as exc:
            _err(f"{args.file}: {job.metadata.name}: {exc}")
            return 1
    sys.stdout.write(to_yaml(objs))
    return 0


@command(
    "operator",
    "Run the kubetune operator (kopf) against the cluster in KUBECONFIG or in-cluster.",
    op_settings.add_arguments,
)
def operator(args: argparse.Namespace) -> int:
    from kubetune.operator.__main__ import run_operator

    return run_operator(op_settings.from_args(args))

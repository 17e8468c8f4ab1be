"""Operator settings: ``kubetune operator`` flags, each also readable from ``KUBETUNE_<FLAG>``.

=========================  ==================================  ==========================================
flag                       env                                 meaning
=========================  ==================================  ==========================================
--namespace NS (repeat)    KUBETUNE_NAMESPACE (comma list)     watch only these namespaces
--all-namespaces           KUBETUNE_ALL_NAMESPACES=true        watch the whole cluster (default when no
                                                               namespace is given)
--standalone               KUBETUNE_STANDALONE=true            single replica: no peering
--peering NAME             KUBETUNE_PEERING                    kopf peering object for HA (default kubetune)
--peering-priority N       KUBETUNE_PEERING_PRIORITY           this replica's priority (default: random; the
                                                               highest live replica acts, the others wait)
--metrics-port 8080        KUBETUNE_METRICS_PORT               operator Prometheus metrics (0: off)
--health-port 8081         KUBETUNE_HEALTH_PORT                kopf liveness at http://0.0.0.0:PORT/healthz
--trainer-image IMAGE      KUBETUNE_TRAINER_IMAGE              default trainer image of the pods
--default-output-uri URI   KUBETUNE_DEFAULT_OUTPUT_URI         base for jobs without spec.output.uri
                                                               (<base>/<namespace>/<name>)
--default-credentials-secret NAME KUBETUNE_DEFAULT_CREDENTIALS_SECRET  storage Secret for jobs naming none
--gpu-resource NAME        KUBETUNE_GPU_RESOURCE               extended resource of GPUs (nvidia.com/gpu)
--trainer-metrics-port N   KUBETUNE_TRAINER_METRICS_PORT       port of the trainer's metrics (9400)
--sync-interval SECONDS    KUBETUNE_SYNC_INTERVAL              status / progress refresh period (10)
--api-timeout SECONDS      KUBETUNE_API_TIMEOUT                limit of every Kubernetes API call (30)
--kueue-manages-all-jobs   KUBETUNE_KUEUE_MANAGES_ALL_JOBS     Kueue runs with manageJobsWithoutQueueName:
                                                               never resume a Job kubetune did not suspend
--gpu-hour-prices JSON     KUBETUNE_GPU_HOUR_PRICES            price per GPU-hour by spec.resources.gpuType
                                                               ({"H100-80GB": 2.5}): status.cost.estimatedCost
=========================  ==================================  ==========================================
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import overload

from kubetune.api.metrics import DEFAULT_METRICS_PORT, OPERATOR_METRICS_PORT
from kubetune.operator.manifests import DEFAULT_GPU_RESOURCE, DEFAULT_IMAGE, BuildOptions

ENV_PREFIX = "KUBETUNE_"


@dataclass
class OperatorSettings:
    namespaces: list[str] = field(default_factory=list)
    """Namespaces to watch; empty means all namespaces."""
    standalone: bool = False
    """Run without peering (a single replica)."""
    peering: str = "kubetune"
    """Name of the kopf peering object shared by the replicas."""
    peering_priority: int | None = None
    """Priority among replicas; replicas with equal priority would all pause, so the default is random."""
    metrics_port: int = OPERATOR_METRICS_PORT
    health_port: int = 8081
    trainer_image: str = DEFAULT_IMAGE
    default_output_uri: str | None = None
    default_credentials_secret: str | None = None
    """Storage Secret (AWS_* keys) for jobs without spec.output.credentialsSecret."""
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    trainer_metrics_port: int = DEFAULT_METRICS_PORT
    sync_interval: float = 10.0
    """Seconds between status / progress refreshes of a running FineTuneJob."""
    api_timeout: float = 30.0
    """Seconds any Kubernetes API call may take (connecting: at most 5 of them); a hung call fails the pass, which
    the next event or resync retries."""
    kueue_manages_all_jobs: bool = False
    """Kueue is configured with ``manageJobsWithoutQueueName: true`` (it suspends and admits every Job)."""
    gpu_hour_prices: dict[str, float] = field(default_factory=dict)
    """Price per GPU-hour by ``spec.resources.gpuType`` (the chart's ``costs.gpuHourPrice``) for status.cost."""

    def build_options(self) -> BuildOptions:
        return BuildOptions(
            trainer_image=self.trainer_image,
            gpu_resource=self.gpu_resource,
            default_output_uri=self.default_output_uri,
            default_credentials_secret=self.default_credentials_secret,
            metrics_port=self.trainer_metrics_port,
            kueue_manages_all_jobs=self.kueue_manages_all_jobs,
        )


@overload
def _env(name: str) -> str | None: ...
@overload
def _env(name: str, default: str) -> str: ...
def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = OperatorSettings()
    ns_env = [n for n in (_env("namespace") or "").split(",") if n]
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=None,
        metavar="NS",
        help=f"watch this namespace (repeatable; env {ENV_PREFIX}NAMESPACE, comma-separated)",
    )
    p.set_defaults(env_namespaces=ns_env)
    p.add_argument(
        "--all-namespaces",
        "-A",
        action="store_true",
        default=_bool(_env("all-namespaces")),
        help="watch all namespaces (the default without --namespace)",
    )
    p.add_argument(
        "--standalone", action="store_true", default=_bool(_env("standalone")), help="single replica, no peering"
    )
    p.add_argument(
        "--peering",
        default=_env("peering", d.peering),
        metavar="NAME",
        help="kopf peering name for several replicas (only one acts)",
    )
    prio = _env("peering-priority")
    p.add_argument(
        "--peering-priority",
        type=int,
        default=int(prio) if prio else None,
        metavar="N",
        help="priority of this replica among its peers (default: random)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("metrics-port", str(d.metrics_port))),
        help="port of the operator's /metrics (0 turns it off)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=int(_env("health-port", str(d.health_port))),
        help="port of the liveness endpoint /healthz (0 turns it off)",
    )
    p.add_argument(
        "--trainer-image",
        default=_env("trainer-image", d.trainer_image),
        metavar="IMAGE",
        help="default trainer image (spec.resources.image overrides)",
    )
    p.add_argument(
        "--default-output-uri",
        default=_env("default-output-uri"),
        metavar="URI",
        help="output base for FineTuneJobs without spec.output.uri",
    )
    p.add_argument(
        "--default-credentials-secret",
        default=_env("default-credentials-secret"),
        metavar="NAME",
        help="Secret with storage credentials for jobs without spec.output.credentialsSecret",
    )
    p.add_argument(
        "--gpu-resource",
        default=_env("gpu-resource", d.gpu_resource),
        metavar="NAME",
        help="extended resource name of GPUs (spec.resources.gpuResource overrides)",
    )
    p.add_argument(
        "--trainer-metrics-port",
        type=int,
        default=int(_env("trainer-metrics-port", str(d.trainer_metrics_port))),
        help="port of the trainer's Prometheus endpoint on rank 0",
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        default=float(_env("sync-interval", str(d.sync_interval))),
        help="seconds between status/progress refreshes",
    )
    p.add_argument(
        "--api-timeout",
        type=float,
        default=float(_env("api-timeout", str(d.api_timeout))),
        help="seconds any Kubernetes API call may take",
    )
    p.add_argument(
        "--kueue-manages-all-jobs",
        action="store_true",
        default=_bool(_env("kueue-manages-all-jobs")),
        help="Kueue runs with manageJobsWithoutQueueName: true",
    )
    p.add_argument(
        "--gpu-hour-prices",
        type=_prices,
        default=_env("gpu-hour-prices", ""),
        metavar="JSON",
        help="price per GPU-hour by spec.resources.gpuType, e.g. '{\"H100-80GB\": 2.5}'",
    )


def _prices(text: str) -> dict[str, float]:
    from kubetune.operator.cost import parse_prices

    try:
        return parse_prices(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def from_args(args: argparse.Namespace) -> OperatorSettings:
    namespaces = [] if args.all_namespaces else (args.namespace or args.env_namespaces)
    return OperatorSettings(
        namespaces=list(namespaces),
        standalone=args.standalone,
        peering=args.peering,
        peering_priority=args.peering_priority,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        trainer_image=args.trainer_image,
        default_output_uri=args.default_output_uri,
        default_credentials_secret=args.default_credentials_secret,
        gpu_resource=args.gpu_resource,
        trainer_metrics_port=args.trainer_metrics_port,
        sync_interval=args.sync_interval,
        api_timeout=args.api_timeout,
        kueue_manages_all_jobs=args.kueue_manages_all_jobs,
        gpu_hour_prices=dict(args.gpu_hour_prices),
    )

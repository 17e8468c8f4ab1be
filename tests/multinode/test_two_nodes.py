"""Two "nodes" (network namespaces with their own addresses), each running `kubetune-train` with the environment
the operator renders for its pod: 2 nodes x 2 CPU processes over gloo, DDP, DeepSpeed ZeRO-3 and FSDP (FSDP2,
``fully_shard``). Each run writes one artifact whose manifest records world_size 4 and the strategy, and its loss
curve matches a single process trained on the same global batch."""

from __future__ import annotations

import pytest

from tests.multinode.netns import SUBNET, TwoNodes
from tests.multinode.pair import pair_job, start_pair, wait_all
from tests.trainer.stages.helpers import history, manifest
from tests.trainer.stages.test_distributed import free_port, train

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

STEPS = 4
# Same rows in the same order per optimizer step (4 ranks x 1 row vs 1 process x 4 rows), the loss averaged over
# the tokens of all ranks: what differs is float summation order (reductions across ranks, ZeRO/FSDP shards).
LOSS_RTOL = 2e-3


def curve(out) -> list[float]:
    return [h["loss"] for h in history(out) if "loss" in h]


@pytest.fixture(scope="module")
def single_process_curve(tmp_path_factory, tiny_model_dir, cache_dir) -> list[float]:
    """The reference: one process, batch 4 (= 2 nodes x 2 processes x batch 1), otherwise the same job."""
    tmp = tmp_path_factory.mktemp("single")
    pj = pair_job(tmp, tiny_model_dir, cache_dir, "single", nodes=1, resources={"nodes": 1, "gpusPerNode": 0},
                  training={"maxSteps": STEPS, "batchSize": 4})
    proc = train(pj.config, {"MASTER_PORT": str(free_port())})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert manifest(pj.out)["metrics"]["world_size"] == 1
    return curve(pj.out)


@pytest.mark.parametrize(("distributed", "recorded"), [
    ({"strategy": "ddp"}, "ddp"),
    ({"strategy": "deepspeed", "zeroStage": 3}, "deepspeed-zero3"),
    ({"strategy": "fsdp"}, "fsdp"),
], ids=["ddp", "deepspeed-zero3", "fsdp"])
def test_two_nodes_train_like_one_process(netns_ok, tmp_path, tiny_model_dir, cache_dir, single_process_curve,
                                          distributed, recorded):
    pj = pair_job(tmp_path, tiny_model_dir, cache_dir, f"mn-{recorded}", distributed=distributed,
                  training={"maxSteps": STEPS})
    with TwoNodes(tmp_path, pj.hostnames(), pj.node_names()) as nodes:
        for node in nodes.nodes:  # the pod network only: no default route, nothing outside is reachable
            assert nodes.routes(node) == [f"{SUBNET}.0/24 dev eth0 proto kernel scope link src {node.address}"]
        start_pair(pj, nodes)
        codes = wait_all(nodes, timeout=600)
        logs = [node.log() for node in nodes.nodes]
        assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
    assert "launching 2 x 2 workers (node 0)" in logs[0] and "launching 2 x 2 workers (node 1)" in logs[1]
    data = manifest(pj.out)
    metrics = data["metrics"]
    assert (metrics["world_size"], metrics["distributed"], metrics["global_step"]) == (4, recorded, STEPS), metrics
    losses = curve(pj.out)
    assert len(losses) == len(single_process_curve) == STEPS
    assert losses == pytest.approx(single_process_curve, rel=LOSS_RTOL), (losses, single_process_curve)

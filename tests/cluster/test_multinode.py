"""Multi-node runs on a simulated 2-node cluster (two `ray start` processes on 127.0.0.1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import REPO, VENV_BIN, LocalRayCluster, cluster_local_settings, subprocess_env

pytestmark = pytest.mark.slow

TINY_TRAIN = [
    "--set", "train.epochs=1",
    "--set", "train.model.name=glow",
    "--set", "train.model.levels=1",
    "--set", "train.model.steps=1",
    "--set", "train.model.hidden=8",
    "--set", "train.scaling.num_workers=2",
    "--set", "train.scaling.cpus_per_worker=1",
]


def run_train(cluster: LocalRayCluster, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "nfpipe"), "run", "--address", cluster.address, "--stages", "train",
         *cluster_local_settings(tmp), *TINY_TRAIN],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=400,
    )


def unshare_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One head and one worker node for the module (1 CPU each); the worker node cannot see
    the folder `hidden` (its own mount namespace) where unshare works."""
    nodes = LocalRayCluster(tmp_path_factory.mktemp("nodes"))
    try:
        nodes.start_head(num_cpus=1)
        nodes.add_worker(num_cpus=1, hide=nodes.tmp / "hidden" if unshare_works() else None)
        yield nodes
    finally:
        nodes.stop()


def test_two_worker_training_spans_both_nodes(cluster, tmp_path):
    proc = run_train(cluster, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    from ray.util.state import list_actors

    workers = list_actors(
        address=cluster.dashboard,
        filters=[("class_name", "=", "RayTrainWorker")],
        limit=100,
        raise_on_missing_output=False,
    )
    assert len({w.node_id for w in workers}) == 2, workers


@pytest.mark.skipif(not unshare_works(), reason="needs mount namespaces (unshare -m)")
def test_shards_not_visible_on_a_node_fail_before_training(cluster):
    hidden = cluster.tmp / "hidden"  # the driver and the head see it, the worker node not
    proc = run_train(cluster, hidden)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "cannot see" in out and str(hidden / "shards") in out
    assert not (hidden / "mlflow.db").exists() or "epoch" not in out

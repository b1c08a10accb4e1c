"""Two Ray nodes sharing nothing but an S3 endpoint and an `mlflow server` (whose artifacts go
to S3): the cloud set-up without NFS. The worker node's view of the test's local folder is an
empty tmpfs, so anything that worked did so through S3 or MLflow.

One cluster, one S3 server and one MLflow server serve the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import fsspec
import pytest
import requests
from helpers import (
    REPO,
    S3_TEST_ENV,
    VENV_BIN,
    LocalRayCluster,
    free_port,
    stop_process_group,
    subprocess_env,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(subprocess.run(["unshare", "-m", "true"]).returncode != 0,
                       reason="needs mount namespaces (unshare -m)"),
]

NAME = "cloud"
TRAIN = [
    "--set", "train.epochs=4", "--set", "train.model.name=glow",
    "--set", "train.model.levels=1", "--set", "train.model.steps=1",
    "--set", "train.model.hidden=8", "--set", "train.scaling.num_workers=2",
    "--set", "train.scaling.cpus_per_worker=1", "--set", "train.max_failures=2",
    "--set", "train.sample_n=4", "--set", "evaluate.grid_samples=4",
    "--set", "evaluate.temperatures=[0.7]", "--set", "evaluate.k=2",
]


class Cloud:
    """What the module shares: the bucket, the MLflow server, the cluster, local folders."""

    def __init__(self, tmp: Path, bucket: str):
        self.tmp, self.bucket = tmp, bucket
        self.local = tmp / "local"  # the driver's own disk; hidden on the worker node
        self.local.mkdir()
        self.mlflow_port = free_port()
        self.mlflow_url = f"http://127.0.0.1:{self.mlflow_port}"
        self.cluster = LocalRayCluster(tmp)
        self.mlflow = None

    def start(self) -> None:
        log = open(self.tmp / "mlflow.log", "wb")
        self.mlflow = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{self.tmp / 'mlflow.db'}", "--artifacts-destination",
             f"{self.bucket}/mlartifacts", "--host", "127.0.0.1", "--port",
             str(self.mlflow_port), "--workers", "1"],
            cwd=self.tmp, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.cluster.start_head(num_cpus=1)
        self.cluster.add_worker(num_cpus=1, hide=self.local)
        wait_until(lambda: requests.get(self.mlflow_url + "/health", timeout=2).ok, 120,
                   "mlflow server")

    def settings(self) -> list[str]:
        """Exactly the README's cloud settings, with this test's bucket and servers."""
        return [
            "--set", f"name={NAME}",
            "--set", f"workdir={self.local / 'work'}",
            "--set", f"data_prep.output_root={self.bucket}/nfpipe/shards",
            "--set", f"train.storage_path={self.bucket}/nfpipe/runs",
            "--set", f"mlflow.tracking_uri={self.mlflow_url}",
        ]

    def stop(self) -> None:
        self.cluster.stop()
        if self.mlflow is not None:
            stop_process_group(self.mlflow)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, s3_server):
    bucket = s3_server.create_bucket("nfpipe-cloud")
    setup = Cloud(tmp_path_factory.mktemp("cloud"), bucket)
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


def nfpipe(*args: str, env: dict | None = None, timeout: float = 600,
           cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "nfpipe"), *args], cwd=cwd,
                          env=env or subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def s3():
    return fsspec.filesystem("s3", skip_instance_cache=True)


def leaks(text: str) -> list[str]:
    return [name for name, value in S3_TEST_ENV.items()
            if name != "AWS_DEFAULT_REGION" and value in text]


def test_submitted_data_prep_writes_to_s3_and_prints_no_secret(cloud):
    """The bucket's keys come from the nodes' own environment (`ray start` inherited them, as
    the README says); `--env` carries only the endpoint, never a secret."""
    proc = nfpipe("submit", "--address", cloud.cluster.dashboard, "--stages", "data_prep",
                  "--env", "AWS_ENDPOINT_URL", "--wait", *cloud.settings())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert f"data_prep.output_root  {cloud.bucket}/nfpipe/shards" in proc.stderr
    assert "AWS_ENDPOINT_URL (values not shown)" in proc.stderr
    from ray.job_submission import JobSubmissionClient

    listed = JobSubmissionClient(cloud.cluster.dashboard).get_job_info(job_id)
    assert leaks(json.dumps(listed.runtime_env)) == []  # what `ray job list` shows
    manifest = f"{cloud.bucket}/nfpipe/shards/digits-8x8-5bit/manifest.json"
    assert s3().exists(manifest)
    logs = nfpipe("logs", job_id, "--address", cloud.cluster.dashboard)
    assert logs.returncode == 0 and manifest in logs.stdout
    assert leaks(proc.stdout + proc.stderr + logs.stdout) == []


def _kill_a_worker_on_the_second_node(cloud) -> int:
    """SIGKILL the Ray Train worker on the non-head node as soon as the run has registered a
    checkpoint in S3 (the worker is looked up before, so the kill follows it closely)."""
    from ray.util.state import list_actors, list_nodes

    head = [n.node_id for n in list_nodes(address=cloud.cluster.dashboard) if n.is_head_node]
    found: list = []

    def remote_worker() -> bool:
        workers = list_actors(address=cloud.cluster.dashboard, limit=100, filters=[
            ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            raise_on_missing_output=False)
        found[:] = [w for w in workers if w.node_id not in head and w.pid]
        return bool(found)

    wait_until(remote_worker, 400, "a Ray Train worker on the second node")
    runs = f"{cloud.bucket}/nfpipe/runs".removeprefix("s3://")
    # Ray writes its checkpoint manager's snapshot once a checkpoint is registered (uploaded)
    wait_until(lambda: s3().glob(f"{runs}/{NAME}-train-*/checkpoint_manager_snapshot.json"),
               400, "the first registered checkpoint in S3")
    os.kill(found[0].pid, signal.SIGKILL)
    return found[0].pid


def test_two_nodes_train_from_s3_survive_a_killed_worker_and_register(cloud):
    import torch
    from mlflow import MlflowClient
    from ray.util.state import list_actors

    from data_prep import storage
    from train.checkpoint import STATE_FILE

    run = subprocess.Popen(
        [str(VENV_BIN / "nfpipe"), "run", "--address", cloud.cluster.address, "--stages",
         "data_prep,train,evaluate,promote", *cloud.settings(), *TRAIN],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        _kill_a_worker_on_the_second_node(cloud)
        out, _ = run.communicate(timeout=600)
    finally:
        stop_process_group(run)
    assert run.returncode == 0, out[-5000:]
    assert leaks(out) == []

    workers = list_actors(address=cloud.cluster.dashboard, limit=100,
                          filters=[("class_name", "=", "RayTrainWorker")],
                          raise_on_missing_output=False)
    assert len({w.node_id for w in workers}) == 2  # the run spanned both nodes
    assert len(workers) >= 4  # the group was started again after the kill

    records = cloud.local / "work" / "records"
    train = json.loads((records / "train.json").read_text())["outputs"]
    assert train["resumes"] >= 1  # the new worker group restored an S3 checkpoint
    runs = f"{cloud.bucket}/nfpipe/runs".removeprefix("s3://")
    latest = sorted(s3().glob(f"{runs}/{NAME}-train-*/checkpoint_2*"))[-1]
    with storage.local_copy(f"s3://{latest}") as folder:
        state = torch.load(folder / STATE_FILE, weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2, 3, 4]
    client = MlflowClient(cloud.mlflow_url)
    assert client.get_run(train["run_id"]).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(train["run_id"], "bpd/train")]
    assert steps == [1, 2, 3, 4]  # no epoch lost or logged twice across the restart
    promote = json.loads((records / "promote.json").read_text())["outputs"]
    assert promote["promoted"] and promote["model_name"] == "cloud-glow"
    assert s3().find(f"{cloud.bucket}/mlartifacts".removeprefix("s3://"))  # artifacts on S3


def test_champion_loads_in_a_fresh_process_without_s3_credentials(cloud, tmp_path):
    env = subprocess_env()
    for name in (*S3_TEST_ENV, "AWS_ENDPOINT_URL"):
        env.pop(name, None)  # another machine: it reaches the MLflow server only
    out = tmp_path / "samples.png"
    proc = nfpipe("deploy", "sample", "--model", "cloud-glow@champion", "--tracking-uri",
                  cloud.mlflow_url, "--n", "4", "--out", str(out), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert out.stat().st_size > 0


def test_no_credential_in_mlflow_records_or_artifacts(cloud):
    from mlflow import MlflowClient

    client = MlflowClient(cloud.mlflow_url)
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
        assert leaks(json.dumps(run.data.params) + json.dumps(run.data.tags)) == []
    for version in client.search_model_versions():
        assert leaks(json.dumps(version.tags)) == []
    fs = s3()
    for key in fs.find(f"{cloud.bucket}/mlartifacts".removeprefix("s3://")):
        assert leaks(fs.cat_file(key).decode("latin-1")) == [], key
    for path in (cloud.local / "work").rglob("*.json"):
        assert leaks(path.read_text()) == [], path

"""One real 4-trial ASHA sweep on digits (`nfpipe tune`), checked from every side."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient
from tune_helpers import write_pipeline

from flows.io import load_meta, load_model
from pipeline.cli import main
from pipeline.config import load_config

pytestmark = pytest.mark.slow

MAX_T = 3
SWEEP = {
    "space": {
        "model.levels": [1, 2],
        "model.steps": [1, 2],
        "model.coupling": ["affine", "additive"],
        "optim.lr": {"loguniform": [1e-4, 3e-3]},
    },
    "num_samples": 4,
    "scheduler": "asha",
    "grace_period": 1,
    "reduction_factor": 2,
    "max_t": MAX_T,
    "max_concurrent_trials": 1,  # trials in a fixed order: the same rungs every run
    "seed": 0,
}


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory, shards_root):
    workdir = tmp_path_factory.mktemp("sweep")
    path = write_pipeline(workdir, shards_root, SWEEP)
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # rich writes to sys.stdout
        code = main(["tune", str(path)])
    print(printed.getvalue())
    record = json.loads((workdir / "work" / "records" / "tune.json").read_text())
    cfg = load_config(path)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("nfpipe.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("nfpipe.role") == "trial"]
    curves = {
        r.info.run_id: sorted(
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, "bpd/val")
        )
        for r in children
    }
    return SimpleNamespace(path=path, code=code, printed=printed.getvalue(), record=record,
                           out=record["outputs"],
                           client=client, parents=parents, children=children, curves=curves)


def test_sweep_finishes_and_asha_stops_a_trial_early(sweep):
    assert sweep.code == 0 and sweep.record["status"] == "ok"
    epochs = [len(curve) for curve in sweep.curves.values()]
    assert len(epochs) == 4
    assert min(epochs) < MAX_T, f"ASHA stopped nothing: epochs per trial {epochs}"
    assert max(epochs) == MAX_T
    assert sweep.out["trial_epochs"] == sum(epochs) < 4 * MAX_T
    stopped = [r for r in sweep.children if r.data.tags["nfpipe.trial_status"] == "stopped early"]
    assert len(stopped) == sweep.out["stopped_early"] >= 1


def test_tune_ends_with_a_next_block_naming_the_parent_and_best_trial(sweep):
    block = sweep.printed.split("\nnext\n")[-1]
    assert sweep.out["parent_run_id"] in block and sweep.out["run_id"] in block
    assert f"best trial        {sweep.out['best_trial_id']}:" in block
    assert f"run {sweep.path} --stages evaluate,promote" in " ".join(block.split())


def test_best_trial_has_the_lowest_val_bpd_mlflow_recorded(sweep):
    lowest = {run_id: min(v for _, v in curve) for run_id, curve in sweep.curves.items()}
    best_run = min(lowest, key=lowest.get)
    assert sweep.out["run_id"] == best_run
    assert sweep.out["metric"] == "val_bpd"
    assert math.isclose(sweep.out["best_value"], lowest[best_run], rel_tol=1e-9)
    child = next(r for r in sweep.children if r.info.run_id == best_run)
    assert sweep.out["best_config"] == json.loads(child.data.tags["nfpipe.overrides"])
    assert set(sweep.out["best_config"]) == set(SWEEP["space"])


def test_mlflow_one_parent_one_child_per_trial_with_epoch_curves(sweep):
    assert len(sweep.parents) == 1
    parent = sweep.parents[0]
    assert parent.info.run_id == sweep.out["parent_run_id"] and parent.info.status == "FINISHED"
    assert len(sweep.children) == 4
    for child in sweep.children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        steps = [step for step, _ in sweep.curves[child.info.run_id]]
        assert steps == list(range(1, len(steps) + 1))  # one val_bpd per epoch, no repeats
        train = sweep.client.get_metric_history(child.info.run_id, "bpd/train")
        assert sorted(m.step for m in train) == steps
        assert child.data.params["train.epochs"] == str(MAX_T)  # the trial's full train config
        assert child.data.params["train.model.n_bins"] == "17"  # resolved for the dataset
        assert child.data.tags["mlflow.source.git.commit"]
        (dataset,) = child.inputs.dataset_inputs  # the manifest, as on the train stage's run
        assert sweep.out["manifest_fingerprint"].startswith(dataset.dataset.digest)
    for path, value in sweep.out["best_config"].items():
        assert parent.data.params[f"best.{path}"] == str(value)
    assert parent.data.metrics["bpd/val_best"] == pytest.approx(sweep.out["best_value"])


def test_parent_holds_leaderboard_table_plot_and_best_config(sweep, tmp_path):
    parent = sweep.out["parent_run_id"]
    names = {a.path for a in sweep.client.list_artifacts(parent, "leaderboard")}
    assert names == {f"leaderboard/{n}" for n in (
        "leaderboard.csv", "leaderboard.md", "bpd_vs_epoch.png", "best_config.json")}
    local = Path(sweep.client.download_artifacts(parent, "leaderboard", str(tmp_path)))
    assert (local / "bpd_vs_epoch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (local / "leaderboard.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].split(",")[-1] == sweep.out["run_id"]  # best first
    best = json.loads((local / "best_config.json").read_text())
    assert best["overrides"] == sweep.out["best_config"]
    assert best["train"]["epochs"] == MAX_T


def test_model_bundle_is_the_best_checkpoint(sweep):
    model = load_model(sweep.out["model_dir"])
    meta = load_meta(sweep.out["model_dir"])
    assert meta["manifest_fingerprint"] == sweep.out["manifest_fingerprint"]
    assert meta["run_id"] == sweep.out["run_id"] and meta["source"] == "tune"
    assert meta["val_bpd"] == pytest.approx(sweep.out["best_value"])
    cfg = model.config
    best = sweep.out["best_config"]
    assert (cfg.levels, cfg.steps, cfg.coupling) == (
        best["model.levels"], best["model.steps"], best["model.coupling"])
    assert Path(sweep.out["checkpoint"], "model", "model.safetensors").exists()


def test_trial_structures_map_to_different_parameter_counts(sweep):
    by_structure: dict[tuple, set[int]] = {}
    for child in sweep.children:
        o = json.loads(child.data.tags["nfpipe.overrides"])
        key = (o["model.levels"], o["model.steps"], o["model.coupling"])
        by_structure.setdefault(key, set()).add(int(child.data.params["model.n_params"]))
    assert all(len(counts) == 1 for counts in by_structure.values())
    counts = [next(iter(c)) for c in by_structure.values()]
    assert len(by_structure) >= 2 and len(set(counts)) == len(counts), by_structure
    best = next(r for r in sweep.children if r.info.run_id == sweep.out["run_id"])
    exported = sum(p.numel() for p in load_model(sweep.out["model_dir"]).parameters())
    assert exported == int(best.data.params["model.n_params"])


def test_a_finished_sweep_is_skipped(sweep, capsys):
    assert main(["tune", str(sweep.path)]) == 0
    assert "up to date" in capsys.readouterr().out
    record = json.loads((sweep.path.parent / "work" / "records" / "tune.json").read_text())
    assert record["started"] == sweep.record["started"]

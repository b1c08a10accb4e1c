"""The train stage without Ray: its real loop fitted in this process (`in_process_fit`), a real
SQLite MLflow store, real shards and checkpoints. What the stage itself does is checked here:
the MLflow run it opens and finishes, the bundle it exports, `--force` and a finished run found
again. (Ray Train's run, with both ranks' digests: test_train_stage.py; DDP of every family:
test_ddp.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import git_head
from mlflow import MlflowClient
from train_helpers import (
    TINY_MODELS,
    check_forced_run,
    check_stage_run,
    in_process_fit,
    no_cluster,
    progress_epochs,
    tiny_train,
)

from pipeline.stages import train as stage


def _run(ctx, fit=in_process_fit):
    return stage.run(ctx, fit=fit, cluster=no_cluster)


def _one_rank(family: str, **overrides) -> dict:
    return tiny_train(family, scaling={"num_workers": 1}, **overrides)


@pytest.mark.parametrize("family", list(TINY_MODELS))
def test_stage_records_the_run_in_mlflow(family, make_ctx, mlflow_uri, digits_manifest):
    out = _run(make_ctx(_one_rank(family)))

    run = check_stage_run(out, MlflowClient(mlflow_uri), family, digits_manifest)
    tags = run.data.tags
    assert tags["nfpipe.dataset"] == "digits" and tags["nfpipe.model"] == family
    assert tags["nfpipe.train_run"] == Path(out["ray_run"]).name
    assert run.data.params["data_prep.manifest"] == str(digits_manifest)
    assert len(tags["nfpipe.ddp.step1_digests"].split(",")) == 1  # one rank, one digest
    # MLflow's git context finds no commit when the main script sits in a git-ignored folder
    # (the `nfpipe` console script in .venv/bin, pytest here): the code's commit is recorded
    assert tags["mlflow.source.git.commit"] == git_head()


def test_force_trains_a_new_run_and_keeps_the_old(make_ctx, mlflow_uri):
    """`--force` after a finished run trains afresh in a new run (a new MLflow run), keeping
    the old; without --force the finished (forced) run is found again and not fitted."""
    ctx = dataclasses.replace(make_ctx(_one_rank("nice", epochs=1)), fingerprint="fp")
    first = _run(ctx)
    forced = _run(dataclasses.replace(ctx, force=True))
    client = MlflowClient(mlflow_uri)
    check_forced_run(first, forced, client)

    again = _run(ctx, fit=_must_not_fit)  # no --force: the run of this config is found again
    assert again == forced
    assert progress_epochs(again) == [0, 1]
    assert client.get_run(forced["run_id"]).info.status == "FINISHED"


def test_an_unfinished_run_is_fitted_again(make_ctx, mlflow_uri):
    """A run whose MLflow run did not finish (here: reopened as a resume) is fitted, not
    skipped; it resumes from its last checkpoint, in the same MLflow run."""
    ctx = make_ctx(_one_rank("nice", epochs=1))
    first = _run(ctx)
    MlflowClient(mlflow_uri).update_run(first["run_id"], status="RUNNING")  # as if killed
    fits = []

    def counting_fit(*args):
        fits.append(args[3])
        return in_process_fit(*args)

    again = _run(ctx, fit=counting_fit)
    assert fits == [Path(first["ray_run"]).name] and again["run_id"] == first["run_id"]
    assert again["resumes"] == first["resumes"] + 1 and progress_epochs(again) == [0, 1]
    assert MlflowClient(mlflow_uri).get_run(first["run_id"]).info.status == "FINISHED"


def test_a_failed_fit_marks_the_run_failed(make_ctx, mlflow_uri):
    ctx = make_ctx(_one_rank("nice", epochs=1))

    def failing_fit(cfg, job, storage_path, name):
        raise RuntimeError("workers lost")

    with pytest.raises(RuntimeError, match="workers lost"):
        _run(ctx, fit=failing_fit)
    (run,) = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("nfpipe").experiment_id])
    assert run.info.status == "FAILED"
    assert not (ctx.stage_dir / stage.FINISHED_FILE).exists()


def _must_not_fit(cfg, job, storage_path, name):
    raise AssertionError(f"fit called for {name}, which has finished")

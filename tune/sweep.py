"""Run (or resume) a sweep: Ray Tune over the train config, tracked in MLflow, best model out.

```
validate_space ─► parent MLflow run ─► Tuner(run_trial) or Tuner.restore ─► fit
      ─► best trial (lowest reported metric, from its kept checkpoints) ─► model bundle
      ─► leaderboard (csv, md, png) on the parent run, rich table on the console
```

The experiment folder is `{storage}/{name}`, `name` derived from the stage fingerprint: the
same pipeline run finds its interrupted sweep (`Tuner.can_restore`) and continues it; finished
trials are not run again, unfinished and errored ones resume from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console

import tracking
from data_prep import Manifest, storage
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.results import Sweep, SweepResult, summarize
from tune.space import (
    SearchSpaceError,
    check_warmup,
    to_tune_space,
    trial_gpus,
    validate_space,
)
from tune.spec import SweepSpec
from tune.trial import TrialSetup, run_trial
from tune.trial_logger import MlflowTrialLogger, open_parent

_QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",  # the new engine prints its header even at verbose=0
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",  # every epoch saves
}


def sweep_name(pipeline_name: str, fingerprint: str) -> str:
    """Deterministic experiment name: the same pipeline run resumes the same sweep."""
    return f"{pipeline_name}-tune-{fingerprint[:12]}"


def trial_cpus(cfg: TuneConfig, train: TrainConfig) -> float:
    """CPUs one trial holds: its own process, plus its TorchTrainer's workers when it has one."""
    if cfg.workers_per_trial == 1:
        return cfg.cpus_per_trial
    return cfg.cpus_per_trial + cfg.workers_per_trial * train.scaling.cpus_per_worker


def plan_concurrency(cfg: TuneConfig, train: TrainConfig, cluster_cpus: float,
                     cluster_gpus: float = math.inf) -> int:
    """Trials at once, so that every running trial's driver AND workers fit on the cluster.

    A trial driving a TorchTrainer holds its CPU while its workers wait for theirs: if the
    drivers take the CPUs the workers need, nothing progresses. So concurrent trials x
    (cpus_per_trial + workers x cpus_per_worker) must fit. In-process trials on GPUs also
    stop at the cluster's GPUs over each trial's share (4 at 0.25 per GPU).
    """
    per_trial = trial_cpus(cfg, train)
    fits = int(cluster_cpus // per_trial)
    gpus = trial_gpus(cfg, train)
    if gpus and math.isfinite(cluster_gpus):
        fits = min(fits, int(round(cluster_gpus / gpus, 6)))
    need = (
        f"each trial needs {per_trial:g} CPUs (tune.cpus_per_trial={cfg.cpus_per_trial}"
        + (
            f" + tune.workers_per_trial={cfg.workers_per_trial} x "
            f"train.scaling.cpus_per_worker={train.scaling.cpus_per_worker}"
            if cfg.workers_per_trial > 1
            else ""
        )
        + f") and the Ray cluster has {cluster_cpus:g}"
    )
    if fits < 1:
        raise SearchSpaceError(f"tune: no trial fits: {need}; lower them or add CPUs")
    wanted = cfg.max_concurrent_trials or fits
    if cfg.workers_per_trial > 1 and wanted > fits:
        raise SearchSpaceError(
            f"tune.max_concurrent_trials={wanted} would deadlock: {need}, so at most {fits} "
            "trial(s) with their workers fit at once; lower tune.max_concurrent_trials"
        )
    return max(1, min(wanted, fits, cfg.num_samples))


def check_gpus(cfg: TuneConfig, train: TrainConfig, cluster_gpus: float) -> None:
    """Fail before any trial when a trial asks for more GPUs than the whole Ray cluster has:
    Tune would keep such trials pending forever."""
    if not train.scaling.use_gpu:  # (tune.gpus_per_trial without it: `validate_space` refuses)
        return
    if cfg.workers_per_trial > 1:
        need = cfg.workers_per_trial * train.scaling.gpus_per_worker
        source = (f"tune.workers_per_trial={cfg.workers_per_trial} x "
                  f"train.scaling.gpus_per_worker={train.scaling.gpus_per_worker:g}")
    else:
        need = trial_gpus(cfg, train)
        source = (f"tune.gpus_per_trial={need:g}" if cfg.gpus_per_trial is not None
                  else f"train.scaling.gpus_per_worker={need:g}")
    if need > cluster_gpus:
        raise SearchSpaceError(
            f"tune: each trial needs {need:g} GPU(s) (train.scaling.use_gpu=true, {source}) "
            f"and the Ray cluster has {cluster_gpus:g}; lower them, set "
            "train.scaling.use_gpu=false or add GPU nodes"
        )


def trial_resources(cfg: TuneConfig, train: TrainConfig) -> dict[str, float]:
    """What Tune reserves per trial: its CPUs, and the GPUs (or the fraction of one) an
    in-process trial trains on (a TorchTrainer's workers reserve their own)."""
    resources: dict[str, float] = {"cpu": cfg.cpus_per_trial}
    gpus = trial_gpus(cfg, train)
    if gpus:
        resources["gpu"] = gpus
    return resources


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def make_scheduler(cfg: TuneConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    # Rungs at grace·rf^k epochs strictly below max_t: a trial that reaches max_t ends by
    # itself (stop_last_trials=False) rather than being stopped at its last epoch.
    return ASHAScheduler(
        time_attr="epoch",
        max_t=max(cfg.grace_period, cfg.max_t - 1),
        grace_period=cfg.grace_period,
        reduction_factor=cfg.reduction_factor,
        stop_last_trials=False,
    )


def make_search(cfg: TuneConfig, concurrency: int):
    """Random search or Optuna's TPE, seeded, never running more than `concurrency` trials."""
    if cfg.search == "optuna":
        import optuna
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.seed))
        return ConcurrencyLimiter(searcher, max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)


def build_tuner(trainable, spec: SweepSpec, concurrency: int, callbacks: list):
    """A new Tuner for the sweep (every setting that a restore must find again)."""
    from ray import tune

    tune_cfg = spec.tune
    return tune.Tuner(
        trainable,
        param_space=to_tune_space(tune_cfg.space),
        tune_config=tune.TuneConfig(
            metric=tune_cfg.metric,
            mode=tune_cfg.mode,
            scheduler=make_scheduler(tune_cfg),
            search_alg=make_search(tune_cfg, concurrency),
            num_samples=tune_cfg.num_samples,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=spec.storage,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=spec.train.checkpoints_keep,
                checkpoint_score_attribute=tune_cfg.metric,
                checkpoint_score_order=tune_cfg.mode,
            ),
            failure_config=tune.FailureConfig(max_failures=tune_cfg.max_failures),
            verbose=0,  # Tune's reporter off: the caller's displays show the sweep
        ),
    )


def run_sweep(spec: SweepSpec, console: Console | None = None,
              displays: Sequence = ()) -> SweepResult:
    """Run or resume the sweep on the connected Ray; raise SearchSpaceError before any trial
    (and before any MLflow run) when the space cannot run on the dataset.

    `displays` are driver-side Tune callbacks that show the sweep (the pipeline's live
    table); a restored sweep keeps the ones it started with (Tune saved them).
    """
    from ray import tune

    console = console or Console()
    manifest = Manifest.load(spec.manifest_path)
    validate_space(spec.tune, spec.train, tuple(manifest.image_shape), manifest.n_bins)
    check_gpus(spec.tune, spec.train, _cluster_resource("GPU"))
    check_warmup(spec.tune, spec.train, manifest.split("train").count)
    concurrency = plan_concurrency(spec.tune, spec.train, _cluster_resource("CPU"),
                                   _cluster_resource("GPU"))
    experiment_id = tracking.ensure_experiment(spec.tracking_uri, spec.experiment,
                                               spec.artifact_root)
    parent = open_parent(spec.tracking_uri, experiment_id, spec.name, _parent_params(spec),
                         _parent_tags(spec, manifest))
    sweep = Sweep(spec, manifest, experiment_id, parent, console)
    setup = TrialSetup(
        tune=spec.tune.model_dump(mode="json"),
        train=spec.train.model_dump(mode="json"),
        manifest_path=storage.absolute(spec.manifest_path),
        bundle_meta={"manifest_fingerprint": manifest.fingerprint, "dataset": manifest.dataset,
                     "sweep": spec.name, "parent_run_id": parent},
        train_storage=spec.train_runs,
        train_fn=spec.train_fn,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), trial_resources(spec.tune, spec.train)
    )
    try:
        return summarize(_fit(sweep, trainable, concurrency, list(displays)), sweep)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        tracking.finish_run(spec.tracking_uri, parent, status)
        raise


def _fit(sweep: Sweep, trainable, concurrency: int, displays: list):
    """Restore the sweep's Tune experiment when one is on disk, else start it; run it."""
    from ray import tune

    spec = sweep.spec
    if tune.Tuner.can_restore(spec.exp_dir):
        sweep.console.print(f"    resuming sweep {spec.name} from {spec.exp_dir}")
        tuner = tune.Tuner.restore(spec.exp_dir, trainable=trainable, resume_errored=True)
    else:
        sweep.console.print(
            f"    sweep {spec.name}: {spec.tune.num_samples} trials, {spec.tune.scheduler}, "
            f"{spec.tune.search} search, {concurrency} at once → {spec.exp_dir}"
        )
        tuner = build_tuner(trainable, spec, concurrency, [_trial_logger(sweep), *displays])
    with quiet_tune():
        return tuner.fit()


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune's legacy output engine, which `verbose=0` silences (the displays replace it)."""
    saved = {key: os.environ.get(key) for key in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _trial_logger(sweep: Sweep) -> MlflowTrialLogger:
    """The driver-side Tune callback writing the MLflow child runs (the only writer)."""
    spec = sweep.spec
    return MlflowTrialLogger(
        spec.tracking_uri, sweep.experiment_id, sweep.parent_run_id, spec.name,
        spec.tune.model_dump(mode="json"), spec.train.model_dump(mode="json"),
        sweep.manifest.location,
    )


def _cluster_resource(kind: str) -> float:
    """How much of `kind` ("CPU", "GPU") the connected Ray cluster has in total."""
    import ray

    return float(ray.cluster_resources().get(kind, 0.0))


def _parent_params(spec: SweepSpec) -> dict[str, Any]:
    tune_cfg = spec.tune.model_dump(mode="json")
    space = {f"space.{path}": dist.describe() for path, dist in spec.tune.space.items()}
    tune_cfg.pop("space")
    train = tracking.flatten(spec.train.model_dump(mode="json"))
    return {**{f"tune.{k}": v for k, v in tune_cfg.items()}, **space,
            **{f"train.{k}": v for k, v in train.items()}}


def _parent_tags(spec: SweepSpec, manifest: Manifest) -> dict[str, str]:
    return {
        "nfpipe.stage": "tune",
        "nfpipe.pipeline": spec.pipeline,
        "nfpipe.dataset": manifest.dataset,
        "nfpipe.manifest_fingerprint": manifest.fingerprint,
    }

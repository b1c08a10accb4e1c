"""MLflow for every part: where the store is, runs found again by their tags, buffered metrics.

The one home of MLflow glue (train, tune, deploy and the stages use it; it imports no other
project package):

- `store`: the tracking URI made absolute, the one setter of MLflow's global URIs
  (`use_store`), the client (its registry is the same store), the experiment, the git commit
  of the code, and `mask_url_credentials` for every message that may hold a URL.
- `runs`: runs identified by tags and reopened on resume (`reopen_or_create`, with MLflow's
  context tags and the git commit), params, tags and artifacts, run status.
- `training_run`: what a training run records (`train.*` params, the dataset input, tags),
  the same for the train stage's run (`TrainingRun`) and a sweep trial's child run.
- `metrics`: `MlflowTracker`, a buffered writer that logs each (metric, step) at most once.
- `names`: metric names by step axis (`bpd/test`, `epoch/...`, `step/...`), `nfpipe.*` tags.
- `datasets`, `media`, `system`: a dataset manifest as a run input, sample grids as images,
  system metrics of the training process.
"""

from tracking.datasets import log_dataset_input
from tracking.media import log_images
from tracking.metrics import MlflowTracker
from tracking.names import epoch_metric, epoch_metrics, nfpipe_tags
from tracking.runs import (
    context_tags,
    find_run,
    finish_run,
    flatten,
    log_artifacts,
    log_params,
    reopen_or_create,
    set_tags,
)
from tracking.store import (
    TrackingServerUnreachable,
    absolute_tracking_uri,
    check_reachable,
    client,
    ensure_experiment,
    git_commit,
    mask_url_credentials,
    sqlite_folder,
    use_store,
)
from tracking.system import system_metrics

__all__ = [
    "MlflowTracker",
    "TrackingServerUnreachable",
    "absolute_tracking_uri",
    "check_reachable",
    "client",
    "context_tags",
    "ensure_experiment",
    "epoch_metric",
    "epoch_metrics",
    "finish_run",
    "find_run",
    "flatten",
    "git_commit",
    "log_dataset_input",
    "log_images",
    "nfpipe_tags",
    "log_artifacts",
    "log_params",
    "mask_url_credentials",
    "reopen_or_create",
    "set_tags",
    "sqlite_folder",
    "system_metrics",
    "use_store",
]

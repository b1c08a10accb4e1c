"""MLflow for every part: where the store is, runs found again by their tags, buffered metrics.

The one home of MLflow glue (train, tune, deploy and the stages use it; it imports no other
project package):

- `store`: the tracking URI made absolute, the client (its registry is the same store), the
  experiment, the git commit of the code.
- `runs`: runs identified by tags and reopened on resume (`reopen_or_create`), params,
  tags and artifacts, run status.
- `metrics`: `MlflowTracker`, a buffered writer that logs each (metric, step) at most once.
"""

from tracking.metrics import MlflowTracker
from tracking.runs import (
    find_run,
    finish_run,
    flatten,
    log_artifacts,
    log_params,
    reopen_or_create,
    set_tags,
)
from tracking.store import (
    absolute_tracking_uri,
    client,
    ensure_experiment,
    git_commit,
    sqlite_folder,
)

__all__ = [
    "MlflowTracker",
    "absolute_tracking_uri",
    "client",
    "ensure_experiment",
    "finish_run",
    "find_run",
    "flatten",
    "git_commit",
    "log_artifacts",
    "log_params",
    "reopen_or_create",
    "set_tags",
    "sqlite_folder",
]

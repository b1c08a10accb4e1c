"""Runs found again by their tags: a resumed stage or sweep continues its MLflow run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tracking.store import client, git_commit

PARAMS_BATCH = 100  # MLflow's limit of params per log_batch
PARAM_MAX = 6000  # characters of one param value
GIT_COMMIT_TAG = "mlflow.source.git.commit"


def find_run(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of the run carrying all `tags`, or None."""
    where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client(tracking_uri).search_runs([experiment_id], filter_string=where, max_results=1)
    return found[0].info.run_id if found else None


def reopen_or_create(
    tracking_uri: str,
    experiment_id: str,
    identity: Mapping[str, str],
    run_name: str,
    params: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    tags: Mapping[str, str],
) -> str:
    """The run whose tags include `identity`, set RUNNING again (a resumed run); else a new
    run with those tags plus `tags`, and `params` logged once (a callable is called only then,
    for params that are costly to compute).

    A new run also gets the tags MLflow's own `start_run` records: the user, the source (the
    command that ran) and its type, the git commit (the UI's "Created by" and "Source")."""
    run_id = find_run(tracking_uri, experiment_id, identity)
    mlflow = client(tracking_uri)
    if run_id is not None:
        mlflow.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow.create_run(experiment_id, tags=context_tags({**identity, **tags}),
                            run_name=run_name)
    log_params(tracking_uri, run.info.run_id, params() if callable(params) else params)
    return run.info.run_id


def context_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """`tags` over the ones MLflow resolves for a run started here (mlflow.user,
    mlflow.source.name/type, mlflow.source.git.commit, ...).

    MLflow takes the git commit from the checkout holding the main script (`sys.argv[0]`) and
    skips a git-ignored one: the `nfpipe` console script (in `.venv/bin`, or installed outside
    any checkout) and pytest get none. Then the commit of the checkout holding this code is
    recorded under MLflow's own tag."""
    from mlflow.tracking.context.registry import resolve_tags

    resolved = resolve_tags(dict(tags))
    if GIT_COMMIT_TAG not in resolved and (commit := git_commit()):
        resolved[GIT_COMMIT_TAG] = commit
    return resolved


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    client(tracking_uri).set_terminated(run_id, status=status)


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    mlflow = client(tracking_uri)
    for key, value in tags.items():
        mlflow.set_tag(run_id, key, value)


def log_artifacts(tracking_uri: str, run_id: str, local_dir: Path, artifact_path: str) -> None:
    client(tracking_uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches, each value cut to what MLflow stores."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:PARAM_MAX]) for k, v in params.items()]
    mlflow = client(tracking_uri)
    for i in range(0, len(items), PARAMS_BATCH):
        mlflow.log_batch(run_id, params=items[i : i + PARAMS_BATCH])


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1e-3}} -> {'optim.lr': 1e-3} (lists and tuples kept as one value)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat

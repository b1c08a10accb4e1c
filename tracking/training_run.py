"""The MLflow run of one training run: what it records, and how it is found again.

A training run is the train stage's Ray Train run, or one trial of a sweep (its child run).
Both record themselves the same way: the fully resolved train config as `train.`-prefixed
params, the prepared dataset as the run's dataset input, `nfpipe.*` tags over MLflow's own
context tags (user, source, git commit; `runs.context_tags`). The train stage's run is found
again by its Ray run name (`RUN_TAG`), so a resumed Ray run continues the same MLflow run.

Only plain values come in (dicts of params, the manifest's fields): the caller composes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracking.datasets import log_dataset_input
from tracking.names import nfpipe_tags
from tracking.runs import find_run, finish_run, flatten, log_artifacts, reopen_or_create, set_tags
from tracking.store import client

RUN_TAG = "nfpipe.train_run"  # the MLflow run of a Ray Train run, found again on resume
DDP_TAG = "nfpipe.ddp.step1_digests"  # every rank's weight digest after step 1 (all equal)
BUNDLE_PATH = "model_bundle"  # the artifact folder of the exported model bundle
DIGEST_CHARS = 16  # of each rank's digest in DDP_TAG
Params = Mapping[str, Any] | Callable[[], Mapping[str, Any]]  # a callable: computed only if new


@dataclass(frozen=True)
class DatasetRecord:
    """What a run records of the prepared dataset it trained on (a manifest's fields)."""

    dataset: str  # the source's name (`digits`)
    name: str  # the shard folder's name (`digits-8x8-5bit`): the dataset input's name
    fingerprint: str  # sha256 of manifest.json
    location: str  # the manifest file: a local path or a URL
    image_shape: tuple[int, int, int]
    n_bins: int
    splits: Mapping[str, int]  # split name -> images

    def tags(self) -> dict[str, str]:
        return {"dataset": self.dataset, "manifest_fingerprint": self.fingerprint}

    def log(self, tracking_uri: str, run_id: str) -> None:
        """The dataset as the run's input (once; a resumed run already has it)."""
        log_dataset_input(
            tracking_uri, run_id, name=self.name, fingerprint=self.fingerprint,
            manifest_location=self.location, image_shape=self.image_shape,
            profile={"dataset": self.dataset, "image_shape": list(self.image_shape),
                     "n_bins": self.n_bins, "splits": dict(self.splits)},
        )


def train_params(train: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A resolved train config (`TrainConfig.model_dump(mode="json")`, its model with the
    dataset's shape and levels) as MLflow params `train.*`, plus `extra` as they are."""
    return {**flatten(train, "train."), **extra}


def open_training_run(tracking_uri: str, experiment_id: str, identity: Mapping[str, str],
                      run_name: str, params: Params, tags: Mapping[str, str],
                      dataset: DatasetRecord) -> str:
    """The run carrying `identity` (reopened: a resumed run), else a new one with `params`
    and `tags` (`nfpipe.*`, the dataset's among them); either way with its dataset input."""
    run_id = reopen_or_create(tracking_uri, experiment_id, identity, run_name, params,
                              nfpipe_tags({**dataset.tags(), **tags}))
    dataset.log(tracking_uri, run_id)
    return run_id


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run of the train stage's Ray Train run `train_run`."""

    tracking_uri: str
    run_id: str

    @classmethod
    def open(cls, tracking_uri: str, experiment_id: str, train_run: str,
             params: Mapping[str, Any], tags: Mapping[str, str],
             dataset: DatasetRecord) -> TrainingRun:
        """Reopen the MLflow run of Ray run `train_run` (a resume), else create it."""
        run_id = open_training_run(tracking_uri, experiment_id, {RUN_TAG: train_run},
                                   train_run, params, tags, dataset)
        return cls(tracking_uri, run_id)

    @classmethod
    def finished(cls, tracking_uri: str, experiment_id: str,
                 train_run: str) -> TrainingRun | None:
        """The MLflow run of Ray run `train_run` when it exists and has FINISHED, else None."""
        run_id = find_run(tracking_uri, experiment_id, {RUN_TAG: train_run})
        if run_id is None or client(tracking_uri).get_run(run_id).info.status != "FINISHED":
            return None
        return cls(tracking_uri, run_id)

    @contextmanager
    def failing_on_error(self) -> Iterator[None]:
        """Mark the run FAILED (KILLED on Ctrl-C) when the block raises."""
        try:
            yield
        except BaseException as err:
            self.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise

    def log_bundle(self, folder: Path) -> None:
        log_artifacts(self.tracking_uri, self.run_id, folder, BUNDLE_PATH)

    def record_ddp_check(self, digests: list[str]) -> bool:
        """Tag every rank's weight digest after step 1; False when the ranks differ (DDP is
        broken: they must hold the same weights)."""
        if digests:
            set_tags(self.tracking_uri, self.run_id,
                     {DDP_TAG: ",".join(d[:DIGEST_CHARS] for d in digests)})
        return len(set(digests)) <= 1

    def finish(self, status: str = "FINISHED") -> None:
        finish_run(self.tracking_uri, self.run_id, status)

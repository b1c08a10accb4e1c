"""What an MLflow training run records of its config and its dataset, composed from the typed
config and the manifest: the train stage's run and every sweep trial's child run record
themselves alike (`tracking.training_run` writes them)."""

from __future__ import annotations

from typing import Any

from data_prep import Manifest, storage
from tracking.training_run import DatasetRecord, train_params
from train.config import TrainConfig
from train.loop import resolve_model_config


def dataset_record(manifest: Manifest) -> DatasetRecord:
    """The manifest's fields a run records; the dataset input is named after its folder."""
    return DatasetRecord(
        dataset=manifest.dataset,
        name=storage.name_of(storage.parent(manifest.location)),
        fingerprint=manifest.fingerprint,
        location=manifest.location,
        image_shape=tuple(manifest.image_shape),
        n_bins=manifest.n_bins,
        splits={name: split.count for name, split in manifest.splits.items()},
    )


def resolved_params(cfg: TrainConfig, manifest: Manifest, **extra: Any) -> dict[str, Any]:
    """The whole train config as MLflow params `train.*`, its model with the dataset's image
    shape and levels (what the run actually built), plus `extra`."""
    train = cfg.model_dump(mode="json")
    train["model"] = resolve_model_config(cfg, manifest).model_dump(mode="json")
    return train_params(train, **extra)

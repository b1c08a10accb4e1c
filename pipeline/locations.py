"""Where a pipeline reads and writes, by config key: checked before any stage does work.

`nfpipe config show` validates locations offline (their scheme only); `nfpipe run` asks each
object store named by the stages it will run whether the bucket can be listed, in seconds,
and stops with a config error naming the key when it cannot.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_prep import storage
from pipeline.config import ConfigError, PipelineConfig
from tracking import sqlite_folder

TRAINING = ("train", "tune")
LOGGING = ("train", "tune", "evaluate", "promote")


def locations(cfg: PipelineConfig, stages: Iterable[str]) -> dict[str, str]:
    """Config key -> location, for the locations the given stages use."""
    stages = set(stages)
    found: dict[str, str | None] = {}
    if "data_prep" in stages:
        found["data_prep.output_root"] = cfg.data_prep.output_root
        found["data_prep.source"] = cfg.data_prep.source
    if stages & set(TRAINING):
        found["train.storage_path"] = cfg.train.storage_path
    if stages & set(LOGGING) and sqlite_folder(cfg.mlflow.tracking_uri) is not None:
        found["mlflow.artifact_root"] = cfg.mlflow.artifact_root
    return {key: str(value) for key, value in found.items() if value is not None}


def check_locations(cfg: PipelineConfig, stages: Iterable[str]) -> None:
    """Raise ConfigError naming the key of the first object-store URL that cannot be listed."""
    for key, location in locations(cfg, stages).items():
        try:
            storage.check_reachable(location)
        except storage.StorageError as err:
            raise ConfigError(f"{key}: {err}") from None

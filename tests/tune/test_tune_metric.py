"""What a sweep chooses by: the val split's bits/dim, never the test split's (no Ray started)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from train.config import TrainConfig
from tune.config import TuneConfig
from tune.spec import SweepSpec
from tune.sweep import build_tuner


def test_the_default_metric_is_val_bpd_and_test_bpd_is_refused():
    assert TuneConfig().metric == "val_bpd"
    with pytest.raises(ValidationError, match="metric"):
        TuneConfig(metric="test_bpd")


def test_asha_the_best_trial_and_the_kept_checkpoints_read_the_val_metric(tmp_path):
    spec = SweepSpec(name="s", pipeline="p", tune=TuneConfig(), train=TrainConfig(),
                     manifest_path=str(tmp_path / "manifest.json"), out_dir=tmp_path,
                     storage=str(tmp_path / "ray"), tracking_uri="sqlite:///unused.db",
                     experiment="e", artifact_root=str(tmp_path / "artifacts"))
    tuner = build_tuner(lambda config: None, spec, concurrency=1, callbacks=[])
    tune_config = tuner._local_tuner._tune_config  # what Tune hands ASHA and the searcher
    run_config = tuner._local_tuner._run_config
    assert (tune_config.metric, tune_config.mode) == ("val_bpd", "min")
    assert type(tune_config.scheduler).__name__ == "AsyncHyperBandScheduler"
    assert run_config.checkpoint_config.checkpoint_score_attribute == "val_bpd"

"""DataPrepConfig: defaults, validation, and the descriptions the README is generated from."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from data_prep import DataPrepConfig


def test_defaults_resolve_per_dataset():
    assert DataPrepConfig().shard_max_count == 128
    assert DataPrepConfig(dataset="cifar10").shard_max_count == 2048
    assert DataPrepConfig(dataset="celeba", shard_max_count=10).shard_max_count == 10
    cfg = DataPrepConfig.model_validate({"dataset": "celeba"})
    assert (cfg.crop, cfg.size, cfg.n_bits, cfg.download) == (148, 64, 5, False)


@pytest.mark.parametrize("bad, where", [
    ({"datset": "digits"}, "datset"),
    ({"dataset": "mnist"}, "dataset"),
    ({"shard_max_count": 0}, "shard_max_count"),
    ({"shard_max_bytes": -1}, "shard_max_bytes"),
    ({"test_fraction": 0}, "test_fraction"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": 0}, "val_fraction"),  # models are chosen on it: every dataset has one
    ({"test_fraction": 0.6, "val_fraction": 0.5}, "no images would be left for train"),
    ({"n_bits": 9}, "n_bits"),
    ({"dataset": "celeba", "crop": 32, "size": 64}, "size (64) must not exceed crop (32)"),
])
def test_invalid_values_name_the_field(bad, where):
    with pytest.raises(ValidationError, match=re.escape(where)):
        DataPrepConfig.model_validate(bad)


def test_frozen_and_documented():
    cfg = DataPrepConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3
    for name, field in DataPrepConfig.model_fields.items():
        assert field.description and len(field.description) > 20, name

"""Bad configs fail early with messages that say what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows import ModelConfig, build_model


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden": 0}, r"hidden\n.*greater than 0"),
        ({"levels": -1}, r"levels\n.*greater than 0"),
        ({"coupling": "sine"}, r"coupling\n.*'affine' or 'additive'"),
        ({"invconv": "qr"}, r"invconv\n.*'lu' or 'plain'"),
        ({"hiden": 64}, r"hiden\n.*Extra inputs are not permitted"),
        ({"n_bins": 1}, r"n_bins\n.*greater than or equal to 2"),
        ({"name": "pixelcnn"}, r"name\n.*'glow', 'realnvp', 'nice', 'vae' or 'fvae'"),
        ({"logit_alpha": 0.5}, r"logit_alpha\n.*less than 0.5"),
    ],
)
def test_invalid_values_fail_validation(fields, message):
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**{"name": "glow", **fields})


def test_config_is_frozen_and_every_field_is_documented():
    cfg = ModelConfig(name="glow")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.hidden = 3
    undocumented = [n for n, f in ModelConfig.model_fields.items() if not f.description]
    assert not undocumented


@pytest.mark.parametrize("name", ["glow", "realnvp", "nice", "vae", "fvae"])
def test_unset_data_fields_point_to_the_manifest(name):
    with pytest.raises(ValueError, match="image_shape and n_bins not set.*dataset manifest"):
        build_model(ModelConfig(name=name))
    with pytest.raises(ValueError, match="n_bins not set"):
        build_model(ModelConfig(name=name, image_shape=(1, 8, 8)))


@pytest.mark.parametrize(
    ("name", "levels", "shape", "message"),
    [
        ("glow", 2, (3, 6, 6), r"glow with levels=2 squeezes 2 times.*divisible by 2\*\*2 = 4"
                               r"; got image 3x6x6"),
        ("fvae", 4, (1, 8, 8), r"divisible by 2\*\*4 = 16"),
        ("realnvp", 3, (3, 6, 6), r"realnvp with levels=3 squeezes 2 times.*2\*\*2 = 4"),
        ("realnvp", 4, (3, 8, 8), r"leaves a 1x1 image"),
        ("vae", 3, (1, 12, 12), r"vae with levels=3 down-samples 3 times"),
    ],
)
def test_impossible_structures_are_clear_errors(name, levels, shape, message):
    cfg = ModelConfig(name=name, levels=levels, image_shape=shape, n_bins=256)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_values_filled_by_model_copy_are_validated_at_build():
    cfg = ModelConfig(name="glow").model_copy(update={"image_shape": (1, 8, 8), "n_bins": 65536})
    with pytest.raises(ValidationError, match="n_bins"):
        build_model(cfg)
    ok = ModelConfig(name="glow").model_copy(update={"image_shape": [1, 8, 8], "n_bins": 17})
    assert build_model(ok).image_shape == (1, 8, 8)


def test_logit_preprocessing_is_refused_for_the_variational_models():
    with pytest.raises(ValueError, match="vae has no logit preprocessing"):
        build_model(ModelConfig(name="vae", image_shape=(1, 8, 8), n_bins=17, preprocess="logit"))


def test_flows_imports_no_orchestration_frameworks():
    code = ("import sys, flows, flows.io, flows.viz; "
            "print(sorted({'ray', 'mlflow', 'webdataset'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"

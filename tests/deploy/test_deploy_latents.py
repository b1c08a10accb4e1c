"""Exact latent inference on real digits: every family's round trip and interpolation, and
`nfpipe deploy encode|decode|reconstruct|interpolate` against the session's registry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deploy_helpers import DIRECTED, MODEL_NAME
from PIL import Image

from flows.latents import decode_levels, encode_levels, interpolate, load_latents
from flows.viz import grid_shape
from pipeline import cli
from tests.train.train_helpers import TINY_MODELS

FLOWS = ["glow", "realnvp", "nice"]


@pytest.fixture(scope="module")
def tiny_models(manifest):
    """Every family of TINY_MODELS, ActNorm initialised from 64 real training digits."""
    from data_prep import make_loader
    from flows import ModelConfig, build_model, initialize_from_batch

    x, _ = next(iter(make_loader(manifest, "train", 64, mode="eval")))
    models = {}
    for family, section in TINY_MODELS.items():
        torch.manual_seed(0)
        cfg = ModelConfig(**section, image_shape=tuple(manifest.image_shape),
                          n_bins=manifest.n_bins)
        models[family] = build_model(cfg)
        initialize_from_batch(models[family], x)
        models[family].eval()
    return models


@pytest.mark.parametrize("family", FLOWS)
def test_flow_round_trip_returns_the_levels(family, tiny_models, test_images):
    model = tiny_models[family]
    z = encode_levels(model, test_images)
    assert np.array_equal(decode_levels(model, z), test_images)


@pytest.mark.parametrize("family", ["vae", "fvae"])
def test_variational_reconstruction_bpd_is_reported(family, tiny_models, test_images,
                                                    record_property):
    from flows.scoring import score_levels

    model = tiny_models[family]
    recon = decode_levels(model, encode_levels(model, test_images))
    assert recon.shape == test_images.shape and recon.dtype == np.uint8
    bpd, recon_bpd = score_levels(model, test_images).mean(), score_levels(model, recon).mean()
    assert np.isfinite(bpd) and np.isfinite(recon_bpd)
    record_property("bpd", float(bpd))  # reported, not asserted equal: a posterior mean
    record_property("reconstruction_bpd", float(recon_bpd))


@pytest.mark.parametrize("family", FLOWS)
def test_interpolation_moves_monotonically_from_a_to_b(family, tiny_models, test_images):
    """The mean |level - A's level| of the frames never decreases from A to B (it holds for
    all 8 test pairs here, also with the couplings moved off their identity init)."""
    model = tiny_models[family]
    for a, b in zip(test_images[0:8:2], test_images[1:8:2], strict=True):
        strip = interpolate(model, a, b, steps=8)
        assert strip.shape == (10, *model.image_shape)
        assert np.array_equal(strip[0], a) and np.array_equal(strip[-1], b)
        to_a = [np.abs(frame.astype(int) - a).mean() for frame in strip]
        assert all(d1 <= d2 for d1, d2 in zip(to_a, to_a[1:], strict=False)), to_a
        assert to_a[0] == 0 < to_a[-1]


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def uri(registry, champion, tmp_path, monkeypatch) -> list[str]:
    monkeypatch.chdir(tmp_path)  # no pipeline.yaml here: the built-in defaults
    return ["--tracking-uri", registry[0], "--model", f"{MODEL_NAME}@champion"]


def _png(path, levels: np.ndarray) -> str:
    Image.fromarray(levels[0].astype(np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_encode_then_decode_returns_the_images(suffix, uri, tmp_path, model, test_images,
                                               manifest):
    shard = manifest.shard_paths("test")[0]
    pngs = [_png(tmp_path / f"img{i}.png", test_images[i]) for i in range(2)]
    out = tmp_path / f"z{suffix}"
    assert cli.main(["deploy", "encode", *uri, *pngs, str(shard), "--out", str(out)]) == 0
    latents = load_latents(out)
    n = 2 + manifest.split("test").shards[0].count
    assert sorted(latents) == ["level0", "level1"]
    assert {k: v.shape for k, v in latents.items()} == {
        k: (n, *v.shape[1:]) for k, v in encode_levels(model, test_images[:1]).items()}
    levels = tmp_path / "x.npy"
    assert cli.main(["deploy", "decode", *uri, str(out), "--out", str(levels)]) == 0
    back = np.load(levels)
    assert back.shape == (n, 1, 8, 8) and np.array_equal(back[:2], test_images[:2])
    grid = tmp_path / "x.png"
    assert cli.main(["deploy", "decode", *uri, str(out), "--out", str(grid), "--nrow", "8"]) == 0
    with Image.open(grid) as image:
        assert (image.height, image.width) == grid_shape(n, (8, 8), 8)


def test_reconstruct_writes_inputs_above_reconstructions(uri, tmp_path, capsys, test_images):
    images = tmp_path / "x.npy"
    np.save(images, test_images[:5])
    out = tmp_path / "rec.png"
    capsys.readouterr()
    assert cli.main(["deploy", "reconstruct", *uri, str(images), "--out", str(out),
                     "--scale", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] and result["identical"] == result["images"] == 5
    assert result["mean_abs_level_error"] == 0 and result["bpd"] == result["reconstruction_bpd"]
    with Image.open(out) as image:
        height, width = grid_shape(10, (8, 8), 5)
        assert (image.height, image.width) == (2 * height, 2 * width)
        pixels = np.asarray(image)[::2, ::2]
    top, bottom = pixels[2:10, 2:42], pixels[12:20, 2:42]
    assert np.array_equal(top, bottom)  # exact: the reconstructions are the inputs


def test_interpolate_writes_a_strip_with_the_images_at_the_ends(uri, tmp_path, model,
                                                                 test_images):
    a, b = (_png(tmp_path / f"{n}.png", test_images[i]) for n, i in (("a", 0), ("b", 1)))
    out = tmp_path / "interp.npy"
    assert cli.main(["deploy", "interpolate", *uri, a, b, "--steps", "3",
                     "--out", str(out)]) == 0
    strip = np.load(out)
    assert np.array_equal(strip, interpolate(model, test_images[0], test_images[1], steps=3))
    assert np.array_equal(strip[0], test_images[0]) and np.array_equal(strip[-1], test_images[1])
    png = tmp_path / "interp.png"
    assert cli.main(["deploy", "interpolate", *uri, a, b, "--steps", "8", "--scale", "3",
                     "--out", str(png)]) == 0
    with Image.open(png) as image:
        height, width = grid_shape(10, (8, 8), 10)
        assert (image.height, image.width) == (3 * height, 3 * width)  # one row of 10


def test_a_wrong_image_shape_is_a_usage_error(uri, tmp_path, capsys, test_images):
    wrong = _png(tmp_path / "big.png", np.zeros((1, 9, 8), np.uint8))
    right = _png(tmp_path / "a.png", test_images[0])
    assert cli.main(["deploy", "encode", *uri, wrong, "--out", str(tmp_path / "z.npz")]) == 2
    assert "big.png: image of shape [1, 9, 8] (C, H, W), but the model expects [1, 8, 8]" in (
        capsys.readouterr().err)
    assert cli.main(["deploy", "interpolate", *uri, right, wrong]) == 2
    assert "big.png: image of shape [1, 9, 8]" in capsys.readouterr().err
    assert not (tmp_path / "z.npz").exists() and not (tmp_path / "interpolation.png").exists()


@pytest.mark.parametrize("family", ["vae", "fvae"])
def test_variational_reconstruct_and_interpolate_from_a_bundle(family, tiny_models, registry,
                                                               tmp_path, capsys, test_images,
                                                               record_property):
    """A bare bundle folder as --model: the posterior-mean reconstruction and its bits/dim
    (reported), and a strip whose ends are the two images."""
    from flows.io import save_model

    folder = save_model(tiny_models[family], tmp_path / "bundle")
    args = ["--tracking-uri", registry[0], "--model", str(folder)]
    images = tmp_path / "x.npy"
    np.save(images, test_images[:4])
    capsys.readouterr()
    assert cli.main(["deploy", "reconstruct", *args, str(images), "--json",
                     "--out", str(tmp_path / "rec.npy")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert not result["exact"] and result["images"] == 4
    assert np.isfinite(result["bpd"]) and np.isfinite(result["reconstruction_bpd"])
    record_property("reconstruction", result)
    assert np.load(tmp_path / "rec.npy").shape == (4, 1, 8, 8)
    np.save(tmp_path / "a.npy", test_images[:1])
    np.save(tmp_path / "b.npy", test_images[1:2])
    out = tmp_path / "strip.npy"
    assert cli.main(["deploy", "interpolate", *args, str(tmp_path / "a.npy"),
                     str(tmp_path / "b.npy"), "--steps", "2", "--out", str(out)]) == 0
    strip = np.load(out)
    assert strip.shape == (4, 1, 8, 8)
    assert np.array_equal(strip[0], test_images[0]) and np.array_equal(strip[-1], test_images[1])


# --- attribute directions ------------------------------------------------------------------
# (the `directed` fixture: tests/deploy/conftest.py)

@pytest.fixture
def directed_uri(registry, directed, tmp_path, monkeypatch) -> list[str]:
    monkeypatch.chdir(tmp_path)
    return ["--tracking-uri", registry[0], "--model", f"{DIRECTED}@champion"]


def test_directions_registered_with_the_model_come_back_equal(directed):
    """The digest covers attributes.safetensors, and pulling the model gives the same
    directions."""
    from deploy.load import load_served
    from flows.attributes import DIRECTIONS_FILE, load_directions

    scorer, info = load_served(f"models:/{DIRECTED}@champion")
    assert info["verified"]
    stored = load_directions(directed / DIRECTIONS_FILE)
    assert scorer.directions.names == stored.names == [str(d) for d in range(10)]
    assert scorer.directions.counts == stored.counts
    for name in stored.names:
        for latent, vector in stored.get(name).items():
            assert np.array_equal(scorer.directions.get(name)[latent], vector)


def test_a_bundle_without_directions_keeps_its_old_digest_and_loads(bundle, directed):
    """Old bundles (three files) digest as before the optional file existed and load with
    `directions` None; the directions file changes the digest."""
    import hashlib

    from deploy.pyfunc import BUNDLE_FILES, bundle_sha256, load_scorer

    three = hashlib.sha256()
    for name in BUNDLE_FILES:
        three.update(f"{name}\0{hashlib.sha256((bundle / name).read_bytes()).hexdigest()}\n"
                     .encode())
    assert bundle_sha256(bundle) == three.hexdigest() != bundle_sha256(directed)
    assert load_scorer(bundle).directions is None


def test_attributes_lists_the_directions_with_their_counts(directed_uri, capsys, manifest):
    capsys.readouterr()
    assert cli.main(["deploy", "attributes", *directed_uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["attributes"]
    train = manifest.split("train").count
    assert [r["attribute"] for r in rows] == [str(d) for d in range(10)]
    assert all(r["with"] + r["without"] == train and r["with"] > 0 for r in rows)
    assert cli.main(["deploy", "attributes", *directed_uri]) == 0
    assert "10 attribute directions of" in capsys.readouterr().out


def test_manipulate_writes_a_row_with_the_image_at_alpha_0(directed_uri, tmp_path, model,
                                                           directed, test_images):
    from flows.attributes import DIRECTIONS_FILE, load_directions, manipulate

    image = _png(tmp_path / "a.png", test_images[0])
    out = tmp_path / "row.npy"
    assert cli.main(["deploy", "manipulate", *directed_uri, "--attribute", "3", image,
                     "--alphas", "-1,0,0.5,2", "--out", str(out)]) == 0
    row = np.load(out)
    direction = load_directions(directed / DIRECTIONS_FILE).get("3")
    assert np.array_equal(row, manipulate(model, test_images[0], direction, [-1, 0, 0.5, 2]))
    assert np.array_equal(row[1], test_images[0]) and not np.array_equal(row[3], row[1])
    png = tmp_path / "row.png"
    assert cli.main(["deploy", "manipulate", *directed_uri, "--attribute", "3", image,
                     "--scale", "2", "--alphas", "-1,-0.5,0,0.5,1",  # as the README
                     "--out", str(png)]) == 0
    with Image.open(png) as picture:
        height, width = grid_shape(5, (8, 8), 5)  # five alphas, one row
        assert (picture.height, picture.width) == (2 * height, 2 * width)


def test_manipulate_errors_name_the_valid_attributes_or_the_fix(directed_uri, uri, tmp_path,
                                                                capsys, test_images):
    image = _png(tmp_path / "a.png", test_images[0])
    capsys.readouterr()
    assert cli.main(["deploy", "manipulate", *directed_uri, "--attribute", "Smiling",
                     image]) == 2
    assert ("unknown attribute 'Smiling'; this model has directions for: 0, 1, 2, 3, 4, 5, 6, "
            "7, 8, 9") in capsys.readouterr().err
    assert cli.main(["deploy", "manipulate", *directed_uri, "--attribute", "3", image,
                     "--alphas", "1,x"]) == 2
    assert "--alphas '1,x': expected comma-separated numbers" in capsys.readouterr().err
    # the session's champion was registered without directions (as models before them were)
    for command in (["attributes"], ["manipulate", "--attribute", "3", image]):
        assert cli.main(["deploy", *command[:1], *uri, *command[1:]]) == 2
        err = capsys.readouterr().err
        assert "has no attribute directions" in err and "--stages evaluate,promote" in err
    assert not (tmp_path / "manipulate.png").exists()

"""`nfpipe models list` and `nfpipe deploy sample|score` (in-process, on the session registry)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from deploy_helpers import MODEL_NAME
from PIL import Image

from deploy.load import model_uri
from flows.scoring import score_levels
from flows.viz import grid_shape
from pipeline import cli


@pytest.fixture
def uri(registry, champion) -> list[str]:
    return ["--tracking-uri", registry[0]]


def _png(path, levels: np.ndarray):
    Image.fromarray(levels.astype(np.uint8)).save(path)
    return str(path)


def test_sample_writes_a_grid_of_the_requested_size(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pipeline.yaml here: the built-in defaults
    out = tmp_path / "grid" / "samples.png"
    code = cli.main(["deploy", "sample", *uri, "--model", f"{MODEL_NAME}@champion", "--n", "6",
                     "--nrow", "3", "--temperature", "0.7", "--out", str(out)])
    assert code == 0
    with Image.open(out) as image:
        assert (image.height, image.width) == grid_shape(6, (8, 8), 3) == (22, 32)
        assert image.mode == "L"


def test_samples_written_as_levels_score_back(uri, tmp_path, capsys, monkeypatch):
    """`deploy sample --out x.npy` writes the raw levels; `deploy score` reads them back."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "samples.npy"
    code = cli.main(["deploy", "sample", *uri, "--model", f"{MODEL_NAME}@champion", "--n", "4",
                     "--out", str(out)])
    assert code == 0
    levels = np.load(out)
    assert levels.dtype == np.uint8 and levels.shape == (4, 1, 8, 8)
    capsys.readouterr()
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, "--json", str(out)]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert [row["image"] for row in scores] == [f"samples.npy:{i}" for i in range(4)]
    assert all(np.isfinite(row["bpd"]) and row["bpd"] > 0 for row in scores)


def test_score_png_files_and_a_shard(uri, tmp_path, capsys, model, test_images, manifest):
    pngs = [_png(tmp_path / f"img{i}.png", test_images[i, 0]) for i in range(3)]
    shard = manifest.shard_paths("test")[0]
    code = cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, "--seed", "5", "--json",
                     *pngs, str(shard)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    scores = result["scores"]
    assert [row["image"] for row in scores[:3]] == pngs
    n_shard = manifest.split("test").shards[0].count
    assert len(scores) == 3 + n_shard and all(row["image"].startswith(shard.name)
                                              for row in scores[3:])
    # the CLI scores in chunks of max_batch (64) with the request's seed, like a server would
    images = np.concatenate([test_images[:3], _shard_images(shard)])
    expected = np.concatenate([score_levels(model, images[i:i + 64], generator=5)
                               for i in range(0, len(images), 64)])
    np.testing.assert_allclose([row["bpd"] for row in scores], expected, rtol=0, atol=1e-5)
    assert result["mean_bpd"] == pytest.approx(expected.mean())


def _shard_images(shard) -> np.ndarray:
    from deploy.images import read_images

    return np.stack([image for _, image in read_images([shard])])


def test_score_rejects_images_the_model_cannot_take(uri, tmp_path, capsys):
    wrong_size = _png(tmp_path / "big.png", np.zeros((9, 9)))
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, wrong_size]) == 2
    assert "model expects [1, 8, 8]" in capsys.readouterr().err
    eight_bit = _png(tmp_path / "bright.png", np.full((8, 8), 255))
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, eight_bit]) == 2
    assert "Levels must lie in [0, 17)" in capsys.readouterr().err
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME,
                     str(tmp_path / "missing.png")]) == 2


def test_models_list_table_and_unknown_model(uri, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    assert cli.main(["models", "list", *uri]) == 0
    table = capsys.readouterr().out
    assert MODEL_NAME in table and "champion" in table
    assert cli.main(["deploy", "sample", *uri, "--model", "no-such-model@champion"]) == 1
    assert "failed" in capsys.readouterr().err


def test_model_spec_forms():
    assert model_uri("m@challenger", "x", "champion") == "models:/m@challenger"
    assert model_uri("m/3", "x", "champion") == "models:/m/3"
    assert model_uri("m", "x", "champion") == "models:/m@champion"
    assert model_uri(None, "digits-glow", "champion") == "models:/digits-glow@champion"
    assert model_uri("runs:/abc/model", "x", "champion") == "runs:/abc/model"


def test_score_reports_the_k_draw_bound_beside_k_1(uri, tmp_path, capsys, model, test_images):
    pngs = [_png(tmp_path / f"img{i}.png", test_images[i, 0]) for i in range(4)]
    code = cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, "--k", "8", "--json",
                     *pngs])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    k1 = score_levels(model, test_images[:4], generator=0)
    k8 = score_levels(model, test_images[:4], k=8, generator=0)
    np.testing.assert_allclose([row["bpd"] for row in result["scores"]], k1, atol=1e-5)
    np.testing.assert_allclose([row["bpd_k8"] for row in result["scores"]], k8, atol=1e-5)
    assert result["mean_bpd_k8"] == pytest.approx(k8.mean())
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, "--k", "8", *pngs]) == 0
    assert "k=8" in capsys.readouterr().out


def test_deploy_prints_no_artifact_progress_bars(uri, tmp_path, capsys, monkeypatch,
                                                 test_images):
    """MLflow draws a tqdm bar per artifact download unless told not to; the deploy commands
    tell it (a user's own setting wins)."""
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # restored afterwards
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    png = _png(tmp_path / "img.png", test_images[0, 0])
    assert cli.main(["deploy", "score", *uri, "--model", MODEL_NAME, png]) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "Downloading artifacts" not in output and "%|" not in output and "█" not in output

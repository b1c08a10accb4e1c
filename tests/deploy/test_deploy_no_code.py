"""nfpipe's load paths read weights and config only: an artifact's Python never runs.

The artifact: a registered version whose models-from-code file writes a marker file when it is
executed (MLflow's own loader does: the control test shows it). After every nfpipe load path
(deploy sample / score / serve, the deploy, evaluate and promote stages) the marker must not
exist. A version whose weights changed after registration is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import MODEL_NAME, Server, new_run
from helpers import REPO, subprocess_env
from PIL import Image
from rich.console import Console

import tracking
from deploy import registry as reg
from pipeline import cli

pytestmark = pytest.mark.slow

EVIL = "evil-glow"
EVIL_CODE = """
from pathlib import Path
Path({marker!r}).write_text("the artifact's code ran")
import mlflow
from deploy.pyfunc import FlowPyfunc
mlflow.models.set_model(FlowPyfunc())
"""


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marker") / "ran.txt"


@pytest.fixture(scope="module")
def evil_dir(champion, registry, marker, tmp_path_factory) -> Path:
    """The champion's MLflow model folder with its code file replaced by one that writes."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(
        f"models:/{MODEL_NAME}/{champion.version}", dst_path=str(tmp_path_factory.mktemp("e"))))
    (local / "pyfunc_model.py").write_text(EVIL_CODE.format(marker=str(marker)))
    return local


def _register_folder(registry, folder: Path, name: str, tags: dict[str, str]) -> str:
    """Upload `folder` as a run's `model` artifacts and register it with `tags`."""
    client = tracking.client(registry[0])
    run_id = new_run(registry[0], registry[1])
    client.log_artifacts(run_id, str(folder), "model")
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    try:
        client.create_registered_model(name)
    except Exception:  # noqa: BLE001 - already there
        pass
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    return str(version.version)


@pytest.fixture(scope="module")
def evil(champion, registry, evil_dir) -> str:
    """The evil folder registered as EVIL@champion with the genuine bundle's digest."""
    # decided, as the champion it is made: a version still tagged pending (the champion's
    # tags were read before its promotion) would hold later promotions for queue_timeout_s
    tags = {**champion.tags, reg.PROMOTION_TAG: "promoted"}
    version = _register_folder(registry, evil_dir, EVIL, tags)
    tracking.client(registry[0]).set_registered_model_alias(EVIL, "champion", version)
    return version


@pytest.fixture(autouse=True)
def _no_marker(marker):
    marker.unlink(missing_ok=True)
    yield


def test_control_mlflow_itself_runs_the_artifacts_code(evil, registry, marker):
    """Without this the other tests would prove nothing: MLflow's loader executes the file."""
    code = f"import mlflow; mlflow.pyfunc.load_model('models:/{EVIL}@champion')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env(MLFLOW_TRACKING_URI=registry[0],
                                               PYTHONPATH=str(REPO)), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.exists()


def test_deploy_sample_and_score_run_no_artifact_code(evil, registry, marker, tmp_path,
                                                      test_images, capsys):
    uri = ["--tracking-uri", registry[0], "--model", f"{EVIL}@champion"]
    assert cli.main(["deploy", "sample", *uri, "--n", "4", "--out",
                     str(tmp_path / "s.png")]) == 0
    capsys.readouterr()
    png = tmp_path / "x.png"
    Image.fromarray(test_images[0, 0]).save(png)
    assert cli.main(["deploy", "score", *uri, "--json", str(png)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == evil
    assert not marker.exists()


def test_deploy_score_of_a_local_model_folder_runs_no_code(evil_dir, registry, marker,
                                                           tmp_path, test_images, capsys):
    png = tmp_path / "x.png"
    Image.fromarray(test_images[0, 0]).save(png)
    code = cli.main(["deploy", "score", "--tracking-uri", registry[0], "--model",
                     str(evil_dir), "--json", str(png)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "not checked against a recorded sha256" in captured.err
    assert not marker.exists()


def test_deploy_serve_runs_no_artifact_code(evil, registry, marker, tmp_path, test_images):
    import requests

    server = Server([sys.executable, "-m", "pipeline.cli", "deploy", "serve", "--model",
                     f"{EVIL}@champion", "--tracking-uri", registry[0], "--port", "{port}"],
                    cwd=tmp_path, log=tmp_path / "serve.log")
    try:
        server.wait_ready("/ready", timeout_s=90)
        scored = requests.post(server.url + "/invocations", timeout=30,
                               json={"inputs": test_images[:2].tolist()})
        assert scored.status_code == 200
    finally:
        server.stop()
    assert not marker.exists()


def _stage_config(registry, tmp_path):
    from pipeline.config import validate

    return validate({
        "name": "evil", "workdir": str(tmp_path / "work"),
        "mlflow": {"tracking_uri": registry[0], "experiment": "deploy-tests"},
        "evaluate": {"batch_size": 200, "k": 2, "grid_samples": 4, "temperatures": [1.0]},
        "promote": {"model_name": EVIL, "max_batch": 64, "max_samples": 8},
        "deploy": {"smoke_samples": 4, "smoke_images": 8},
    })


def _ctx(cfg, stage: str, inputs: dict):
    from pipeline.stages.base import StageContext

    folder = Path(cfg.workdir) / stage
    folder.mkdir(parents=True, exist_ok=True)
    return StageContext(cfg, folder, inputs, Console(quiet=True))


def test_evaluate_promote_and_deploy_stages_run_no_artifact_code(evil, evil_dir, registry,
                                                                 marker, manifest, tmp_path):
    from pipeline.stages import deploy as deploy_stage
    from pipeline.stages import evaluate, promote

    cfg = _stage_config(registry, tmp_path)
    # a bundle folder with the evil code file and MLmodel beside the weights
    bundle = tmp_path / "bundle"
    shutil.copytree(evil_dir / "artifacts" / "bundle", bundle)
    for name in ("pyfunc_model.py", "MLmodel"):
        shutil.copy(evil_dir / name, bundle / name)
    inputs = {"data_prep": {"manifest": str(manifest.path)},
              "train": {"model_dir": str(bundle), "run_id": new_run(*registry),
                        "test_bpd": 9.0}}
    evaluated = evaluate.run(_ctx(cfg, "evaluate", inputs))
    promoted = promote.run(_ctx(cfg, "promote", {"evaluate": evaluated}))  # champion: EVIL
    assert promoted["model_name"] == EVIL and promoted["champion_version"] is not None
    deployed = deploy_stage.run(_ctx(cfg, "deploy", {"promote": promoted}))
    assert deployed["mean_bpd"] is not None
    assert not marker.exists()


def test_changed_weights_are_refused(champion, registry, evil_dir, tmp_path, bundle, capsys):
    from flows import ModelConfig, build_model
    from flows.io import save_model

    tampered = tmp_path / "tampered"
    shutil.copytree(evil_dir, tampered)
    other = build_model(ModelConfig(name="glow", image_shape=(1, 8, 8), n_bins=17, levels=2,
                                    steps=1, hidden=8))
    save_model(other, tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors",
                tampered / "artifacts" / "bundle" / "model.safetensors")
    version = _register_folder(registry, tampered, "tampered-glow", dict(champion.tags))
    code = cli.main(["deploy", "sample", "--tracking-uri", registry[0], "--model",
                     f"tampered-glow/{version}", "--out", str(tmp_path / "s.png")])
    assert code == 2
    assert "differs from the" in capsys.readouterr().err

    untagged = {k: v for k, v in champion.tags.items() if k != reg.BUNDLE_TAG}
    version = _register_folder(registry, evil_dir, "untagged-glow", untagged)
    assert cli.main(["deploy", "sample", "--tracking-uri", registry[0], "--model",
                     f"untagged-glow/{version}", "--out", str(tmp_path / "s.png")]) == 2
    assert f"has no {reg.BUNDLE_TAG} tag" in capsys.readouterr().err


def test_a_folder_that_is_no_nfpipe_model_is_exit_2(registry, tmp_path, capsys):
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    code = cli.main(["deploy", "sample", "--tracking-uri", registry[0], "--model",
                     str(tmp_path), "--out", str(tmp_path / "s.png")])
    assert code == 2 and "is not an nfpipe model" in capsys.readouterr().err
    assert not np.any([p.suffix == ".png" for p in tmp_path.iterdir()])

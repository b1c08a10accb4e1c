"""The registered pyfunc: loads in a fresh process from `models:/NAME@champion`, same numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from deploy_helpers import MODEL_NAME, readme_sample_request, use_tracking
from helpers import subprocess_env

from flows.scoring import score_levels

FRESH_PROCESS = """
import json, sys
import mlflow, numpy as np
x = np.load(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/%s@champion")
bpd = model.predict(x, params={"seed": 7})
samples = model.predict(x[:1], params={"mode": "sample", "n": 3, "temperature": 0.7})
z = model.predict(x, params={"mode": "encode"})
back = model.predict(z, params={"mode": "decode"})
print(json.dumps({"bpd": bpd.tolist(), "samples": list(samples.shape),
                  "dtype": str(samples.dtype), "max": int(samples.max()),
                  "round_trip": bool((back == x).all()), "z": list(z.shape),
                  "flows_from": sys.modules["flows"].__file__,
                  "deploy_from": sys.modules["deploy.latent_requests"].__file__}))
"""


@pytest.fixture(scope="module")
def pulled(champion, registry):
    import mlflow

    use_tracking(registry[0])
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")


def test_fresh_process_pulls_champion_with_same_bpd(champion, registry, model, test_images,
                                                    tmp_path):
    np.save(tmp_path / "x.npy", test_images)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS % MODEL_NAME, str(tmp_path / "x.npy")],
        cwd=tmp_path,  # not the repo: `flows` must come with the model (code_paths)
        env=subprocess_env(MLFLOW_TRACKING_URI=registry[0], PYTHONPATH=""),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected = score_levels(model, test_images, generator=7)
    np.testing.assert_allclose(out["bpd"], expected, rtol=0, atol=1e-5)
    assert out["samples"] == [3, 1, 8, 8] and out["dtype"] == "uint8" and out["max"] < 17
    assert out["round_trip"] and out["z"] == [16, 64]  # encode, then decode: the images
    assert "/code/flows/" in out["flows_from"], out["flows_from"]
    assert "/code/deploy/" in out["deploy_from"], out["deploy_from"]  # shipped, not the repo's


def test_model_has_signature_example_and_no_pickle(champion, registry):
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/{champion.version}")
    # no input schema: levels [B, C, H, W] for most modes, float latents [B, D] for decode;
    # the image shape is the model's metadata (and the model checks every input itself)
    assert info.signature.inputs is None
    assert info.metadata["image_shape"] == [1, 8, 8] and info.metadata["n_bins"] == 17
    params = {p.name: p for p in info.signature.params}
    assert set(params) == {"mode", "k", "seed", "n", "temperature", "steps", "attribute",
                           "alphas"}
    assert params["alphas"].shape == (-1,) and params["alphas"].dtype.name == "double"
    assert params["steps"].default == 8 and params["attribute"].default == ""
    assert set(info.metadata["request_forms"]) == {"score", "sample", "encode", "decode",
                                                   "interpolate", "manipulate"}
    assert info.saved_input_example_info is not None
    flavor = info.flavors["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # models from code
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{champion.version}")
    files = {p.name for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()}
    assert {"model.safetensors", "model_config.json", "meta.json"} <= files
    assert not any(name.endswith((".pkl", ".pt", ".pth")) for name in files)


def test_mlflows_scoring_server_takes_the_readme_request_as_nfpipes_does(pulled, model):
    """README's sample request through MLflow's own request handling (what its `/invocations`
    runs: JSON parsing, the signature's schema, `predict`) and through nfpipe's server's: the
    same samples."""
    from mlflow.pyfunc import scoring_server

    from deploy.pyfunc import FlowScorer, run_to_end
    from deploy.serve import plan_request

    body = readme_sample_request()
    answer = scoring_server.invocations(body, "application/json", pulled,
                                        pulled.metadata.get_input_schema())
    assert answer.status == 200, answer.response
    nfpipe = run_to_end(plan_request(FlowScorer(model), body))
    np.testing.assert_array_equal(json.loads(answer.response)["predictions"], nfpipe)


def test_mlflows_scoring_server_round_trips_encode_and_decode(pulled, test_images):
    """MLflow's request handling (no input schema: JSON numbers stay numbers): an encode
    answer's predictions, posted back as a decode request's inputs, give the images exactly;
    float levels are refused by the model, not cast to uint8 by MLflow."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    def post(body):
        return scoring_server.invocations(json.dumps(body), "application/json", pulled,
                                          pulled.metadata.get_input_schema())

    encoded = post({"inputs": test_images.tolist(), "params": {"mode": "encode"}})
    assert encoded.status == 200, encoded.response
    z = json.loads(encoded.response)["predictions"]
    decoded = post({"inputs": z, "params": {"mode": "decode"}})
    assert decoded.status == 200, decoded.response
    np.testing.assert_array_equal(json.loads(decoded.response)["predictions"], test_images)
    with pytest.raises(MlflowException, match="got dtype float64"):
        post({"inputs": np.full((1, 1, 8, 8), 0.5).tolist()})
    # alphas are a JSON list of numbers: MLflow's param schema refuses the CLI's string form
    with pytest.raises(MlflowException, match="'alphas'"):
        post({"inputs": test_images[:1].tolist(),
              "params": {"mode": "manipulate", "attribute": "x", "alphas": "-1,0,1"}})


@pytest.mark.parametrize("x, params, message", [
    (np.full((2, 1, 8, 8), 17, np.uint8), {}, "Levels must lie in [0, 17)"),
    (np.zeros((2, 1, 8, 8), np.float32), {}, "dtype"),
    (np.zeros((2, 8, 8), np.uint8), {}, "shape"),
    (np.zeros((65, 1, 8, 8), np.uint8), {}, "1 to 64 images"),
    (np.zeros((1, 1, 8, 8), np.uint8), {"mode": "sample", "n": 9}, "between 1 and 8"),
    (np.zeros((1, 1, 8, 8), np.uint8), {"mode": "sample", "n": 2, "temperature": -1.0},
     "temperature"),
    (np.zeros((1, 1, 8, 8), np.uint8), {"mode": "encoding"}, "'mode' must be one of"),
    (np.zeros((2, 63), np.float32), {"mode": "decode"}, "Expected latents of shape [B, 64]"),
    (np.zeros((2, 1, 8, 8), np.uint8), {"mode": "interpolate", "steps": 9}, "'steps'"),
    (np.zeros((1, 1, 8, 8), np.uint8), {"mode": "manipulate", "attribute": "Smiling"},
     "no attribute directions"),
    (np.zeros((1, 1, 8, 8), np.uint8), {"k": 0}, "'k'"),
])
def test_bad_requests_are_invalid_parameter_errors(pulled, x, params, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        pulled.unwrap_python_model().predict(None, x, params)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.get_http_status_code() == 400
    assert message in err.value.message


def test_requirements_are_lean_cpu_and_cover_every_shipped_import(logged):
    """requirements.txt: mlflow-skinny (not the full server stack), torch from the CPU index
    where reachable, and a pin for every third-party module the shipped code imports."""
    import ast
    from pathlib import Path

    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(logged[1].model_uri))
    lines = (local / "requirements.txt").read_text().split()
    pins = {line.split("==")[0]: line.split("==")[1] for line in lines if "==" in line}
    assert "--extra-index-url" in lines and "https://download.pytorch.org/whl/cpu" in lines
    assert "mlflow" not in pins and "mlflow-skinny" in pins
    assert not any(name.startswith("nvidia") for name in pins)
    assert "+" not in pins["torch"]  # matches the CPU index's X+cpu as well as PyPI's X

    provides = {"mlflow-skinny": "mlflow"}
    covered = {provides.get(name, name) for name in pins} | {"flows", "deploy"}
    shipped = [*local.joinpath("code").rglob("*.py"), local / "pyfunc_model.py"]
    assert not any(path.name == "viz.py" for path in shipped)  # torchvision stays out
    imported = set()
    for path in shipped:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= covered, third_party - covered

"""Serving over HTTP: `deploy serve` and `mlflow models serve`, real processes on 127.0.0.1."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import requests
from deploy_helpers import (
    DIRECTED,
    MODEL_NAME,
    Server,
    run_readme_latent_requests,
    run_readme_requests,
)

from deploy.pyfunc import FlowScorer
from flows.scoring import score_levels

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def deploy_server(directed, registry, tmp_path_factory):
    """`python -m pipeline.cli deploy serve` on a free loopback port (started once, killed),
    serving the session bundle registered with its attribute directions (DIRECTED)."""
    tmp = tmp_path_factory.mktemp("serve")
    server = Server([sys.executable, "-m", "pipeline.cli", "deploy", "serve",
                     "--model", f"{DIRECTED}@champion", "--tracking-uri", registry[0],
                     "--port", "{port}"], cwd=tmp, log=tmp / "serve.log")
    try:
        server.wait_ready("/health", timeout_s=90)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(champion, registry, tmp_path_factory):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`."""
    tmp = tmp_path_factory.mktemp("mlflow-serve")
    server = Server([str(__import__("helpers").VENV_BIN / "mlflow"), "models", "serve",
                     "-m", f"models:/{MODEL_NAME}@champion", "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", "{port}", "-w", "1"],
                    cwd=tmp, log=tmp / "serve.log", MLFLOW_TRACKING_URI=registry[0])
    try:
        server.wait_ready("/ping", timeout_s=90)
        yield server
    finally:
        server.stop()


def _post(server: Server, payload, **kwargs) -> requests.Response:
    return requests.post(server.url + "/invocations", json=payload, timeout=30, **kwargs)


def test_health_names_the_model(deploy_server):
    health = requests.get(deploy_server.url + "/health", timeout=5).json()
    assert health["status"] == "ok" and health["model_uri"] == f"models:/{DIRECTED}@champion"
    assert str(health["version"]) == "1"
    assert health["image_shape"] == [1, 8, 8] and health["n_bins"] == 17
    assert health["max_samples"] == 8
    assert health["modes"] == ["score", "sample", "encode", "decode", "interpolate", "manipulate"]
    assert health["latent_shapes"] == {"level0": [2, 4, 4], "level1": [8, 2, 2]}
    assert health["attributes"] == [str(d) for d in range(10)]  # the digit classes


def test_scores_a_batch_like_the_in_memory_model(deploy_server, model, test_images):
    response = _post(deploy_server, {"inputs": test_images.tolist(), "params": {"seed": 3}})
    assert response.status_code == 200, response.text
    expected = score_levels(model, test_images, generator=3)
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=0, atol=1e-5)


def test_samples(deploy_server):
    response = _post(deploy_server, {"params": {"mode": "sample", "n": 4, "temperature": 0.7}})
    assert response.status_code == 200, response.text
    levels = np.asarray(response.json()["predictions"])
    assert levels.shape == (4, 1, 8, 8) and levels.min() >= 0 and levels.max() < 17


def test_latent_modes_over_http(deploy_server, mlflow_server, model, test_images, directed):
    """encode -> decode gives the images exactly; interpolate is `flows.latents.interpolate`'s
    strip; manipulate is `flows.attributes.manipulate`'s row along the registered direction
    (alpha 0: the image itself), and a model without directions (the champion that
    `mlflow models serve` serves) answers 400 saying so."""
    from flows.attributes import DIRECTIONS_FILE, load_directions, manipulate
    from flows.latents import interpolate

    encoded = _post(deploy_server, {"inputs": test_images.tolist(), "params": {"mode": "encode"}})
    assert encoded.status_code == 200, encoded.text
    z = encoded.json()["predictions"]
    assert np.shape(z) == (16, 64)
    decoded = _post(deploy_server, {"inputs": z, "params": {"mode": "decode"}})
    assert decoded.status_code == 200, decoded.text
    np.testing.assert_array_equal(decoded.json()["predictions"], test_images)
    strip = _post(deploy_server, {"inputs": test_images[:2].tolist(),
                                  "params": {"mode": "interpolate", "steps": 4}})
    assert strip.status_code == 200, strip.text
    np.testing.assert_array_equal(strip.json()["predictions"],
                                  interpolate(model, test_images[0], test_images[1], 4))
    row = _post(deploy_server, {"inputs": test_images[:1].tolist(), "params": {
        "mode": "manipulate", "attribute": "3", "alphas": [-1, 0, 1]}})
    assert row.status_code == 200, row.text
    direction = load_directions(directed / DIRECTIONS_FILE).get("3")
    expected = manipulate(model, test_images[0], direction, [-1, 0, 1])
    np.testing.assert_array_equal(row.json()["predictions"], expected)
    np.testing.assert_array_equal(expected[1], test_images[0])
    unknown = _post(deploy_server, {"inputs": test_images[:1].tolist(), "params": {
        "mode": "manipulate", "attribute": "Smiling"}})
    assert unknown.status_code == 400
    assert "Unknown attribute 'Smiling'; this model has directions for: 0, 1" in unknown.text
    none = _post(mlflow_server, {"inputs": test_images[:1].tolist(), "params": {
        "mode": "manipulate", "attribute": "3", "alphas": [-1, 0, 1]}})
    assert none.status_code == 400 and "no attribute directions" in none.text


ZEROS = np.zeros((2, 1, 8, 8), dtype=int).tolist()


@pytest.mark.parametrize("payload, status, message", [
    ({"inputs": np.zeros((2, 1, 8, 7), int).tolist()}, 400, "Expected shape"),
    ({"inputs": np.full((2, 1, 8, 8), 0.5).tolist()}, 400, "got dtype float64"),
    ({"inputs": np.full((2, 1, 8, 8), 17).tolist()}, 400, "Levels must lie in [0, 17)"),
    ({"inputs": np.full((2, 1, 8, 8), -1).tolist()}, 400, "Levels must lie in [0, 17)"),
    ({"inputs": [[[[1, 2]]], [[[1]]]]}, 400, "rectangular"),
    ({"inputs": np.zeros((65, 1, 8, 8), int).tolist()}, 400, "1 to 64 images"),
    ({"params": {"mode": "sample", "n": 1000}}, 400, "between 1 and 8"),
    ({"params": {"mode": "sample", "n": "many"}}, 400, "'n' must be an integer"),
    ({"inputs": ZEROS, "params": {"k": 5000}}, 400, "'k' must be between"),
    ({"inputs": ZEROS, "params": {"temprature": 1}}, 400, "Unknown params"),
    ({"params": {}}, 400, "Scoring needs 'inputs'"),
    ([1, 2, 3], 400, "JSON object"),
    ({"params": {"mode": "sample", "n": 2, "temperature": True}}, 400,
     "'temperature' must be a number"),
    ({"params": {"mode": "sample", "n": True}}, 400, "'n' must be an integer"),
    ({"inputs": ZEROS, "instances": ZEROS}, 400, "not both"),
    ({"inputs": np.full((2, 1, 8, 8), 17).tolist(), "params": {"mode": "encode"}}, 400,
     "Levels must lie in [0, 17)"),
    ({"inputs": np.zeros((2, 60)).tolist(), "params": {"mode": "decode"}}, 400,
     "Expected latents of shape [B, 64]"),
    ({"params": {"mode": "decode"}}, 400, "'decode' needs 'inputs': latents [B, D]"),
    ({"inputs": ZEROS, "params": {"mode": "interpolate", "steps": 50}}, 400,
     "'steps' must be an integer between 0 and 6"),
    ({"inputs": ZEROS[:1], "params": {"mode": "interpolate"}}, 400, "exactly 2 images"),
    ({"inputs": ZEROS, "params": {"mode": "manipulate", "attribute": "Smiling"}}, 400,
     "'manipulate' takes exactly 1 image [1, C, H, W]"),
])
def test_bad_requests_get_4xx_and_server_keeps_serving(deploy_server, payload, status, message):
    response = _post(deploy_server, payload)
    assert response.status_code == status, response.text
    assert message in response.json()["message"]
    assert requests.get(deploy_server.url + "/health", timeout=5).status_code == 200


def test_non_json_and_oversized_bodies(deploy_server):
    url = deploy_server.url + "/invocations"
    assert requests.post(url, data="1,2,3", headers={"Content-Type": "text/csv"},
                         timeout=10).status_code == 415
    broken = requests.post(url, data="{not json", headers={"Content-Type": "application/json"},
                           timeout=10)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["message"]
    digits = requests.post(url, data='{"params": {"mode": "sample", "n": %s}}' % ("9" * 5000),
                           headers={"Content-Type": "application/json"}, timeout=10)
    assert digits.status_code == 400, digits.text
    assert "integer literal over 4300 digits" in digits.json()["message"]
    huge = b"[" * (3 << 20)
    assert requests.post(url, data=huge, headers={"Content-Type": "application/json"},
                         timeout=30).status_code == 413
    assert requests.get(deploy_server.url + "/health", timeout=5).status_code == 200


def test_binds_loopback_only(deploy_server):
    """The listening socket (from /proc/net/tcp) is bound to 127.0.0.1, not 0.0.0.0."""
    from pathlib import Path

    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip(reason="needs Linux /proc/net/tcp")
    listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:]
                 if line.split()[3] == "0A"
                 and int(line.split()[1].split(":")[1], 16) == deploy_server.port]
    assert listening == [f"0100007F:{deploy_server.port:04X}"]


def test_mlflow_models_serve_speaks_the_same_protocol(mlflow_server, model, test_images):
    scored = _post(mlflow_server, {"inputs": test_images.tolist(), "params": {"seed": 3}})
    assert scored.status_code == 200, scored.text
    expected = score_levels(model, test_images, generator=3)
    np.testing.assert_allclose(scored.json()["predictions"], expected, rtol=0, atol=1e-5)
    sampled = _post(mlflow_server, {"inputs": ZEROS[:1],
                                    "params": {"mode": "sample", "n": 2, "temperature": 0.7}})
    assert sampled.status_code == 200, sampled.text
    assert np.asarray(sampled.json()["predictions"]).shape == (2, 1, 8, 8)
    bad = _post(mlflow_server, {"inputs": np.full((1, 1, 8, 8), 16).tolist(),
                                "params": {"mode": "sample", "n": 99}})
    assert bad.status_code == 400 and "between 1 and 8" in bad.text
    # any 4-D batch passes MLflow's schema check (the sample placeholder); the model itself
    # refuses a scoring batch of the wrong shape, with the message nfpipe's server gives
    wrong = _post(mlflow_server, {"inputs": np.zeros((2, 1, 8, 7), int).tolist()})
    assert wrong.status_code == 400 and "Expected shape [B, 1, 8, 8]" in wrong.text
    both = _post(mlflow_server, {"inputs": ZEROS, "instances": ZEROS})
    assert both.status_code == 400, both.text
    # the latent modes: an encode answer decodes to the images; the model's own 400s
    encoded = _post(mlflow_server, {"inputs": test_images.tolist(), "params": {"mode": "encode"}})
    assert encoded.status_code == 200, encoded.text
    decoded = _post(mlflow_server, {"inputs": encoded.json()["predictions"],
                                    "params": {"mode": "decode"}})
    assert decoded.status_code == 200, decoded.text
    np.testing.assert_array_equal(decoded.json()["predictions"], test_images)
    strip = _post(mlflow_server, {"inputs": test_images[:2].tolist(),
                                  "params": {"mode": "interpolate", "steps": 4}})
    assert strip.status_code == 200, strip.text
    assert np.asarray(strip.json()["predictions"]).shape == (6, 1, 8, 8)
    short = _post(mlflow_server, {"inputs": np.zeros((1, 60)).tolist(),
                                  "params": {"mode": "decode"}})
    assert short.status_code == 400 and "Expected latents of shape [B, 64]" in short.text
    assert requests.get(mlflow_server.url + "/ping", timeout=5).status_code == 200


def test_the_readme_requests_give_the_same_answers_on_both_servers(deploy_server, mlflow_server,
                                                                   model, tmp_path):
    """README's request lines, run by bash as written (only the address changed), against
    `nfpipe deploy serve` and `mlflow models serve`: the same samples (seed 0) from both, and
    scoring them back the same bpd, the in-memory model's."""
    samples, bpd = run_readme_requests(deploy_server.url, tmp_path / "nfpipe")
    mlflow_samples, mlflow_bpd = run_readme_requests(mlflow_server.url, tmp_path / "mlflow")
    assert samples.shape == (4, 1, 8, 8) and samples.min() >= 0 and samples.max() < 17
    np.testing.assert_array_equal(samples, mlflow_samples)
    in_memory = FlowScorer(model).run_request(
        None, {"mode": "sample", "n": 4, "temperature": 0.7, "seed": 0})
    np.testing.assert_array_equal(samples, in_memory)
    np.testing.assert_allclose(bpd, mlflow_bpd, rtol=0, atol=1e-6)
    expected = score_levels(model, samples.astype(np.uint8), k=1, generator=0)
    np.testing.assert_allclose(bpd, expected, rtol=0, atol=1e-5)
    # README's latent lines, after those: encode -> decode gives the two samples back, the
    # strip runs from one to the other, and both servers answer the same
    latent = run_readme_latent_requests(deploy_server.url, tmp_path / "nfpipe")
    mlflow_latent = run_readme_latent_requests(mlflow_server.url, tmp_path / "mlflow")
    assert latent["latents"].shape == (2, 64)
    np.testing.assert_array_equal(latent["decoded"], samples[:2])
    assert latent["strip"].shape == (8, 1, 8, 8)
    np.testing.assert_array_equal(latent["strip"][[0, -1]], samples[:2])
    for name, answer in latent.items():
        np.testing.assert_array_equal(answer, mlflow_latent[name], err_msg=name)

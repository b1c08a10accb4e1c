"""Requests in units of work, the work budget, and request bodies (no server process)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from deploy_helpers import readme_sample_request

from deploy.pyfunc import SLICE_IMAGES, BadRequest, FlowScorer, Limits, run_to_end
from deploy.serve import parse_request, plan_request, reachable_from_network
from flows.scoring import score_levels


@pytest.fixture(scope="module")
def scorer(model) -> FlowScorer:
    return FlowScorer(model, {}, Limits(max_batch=256, max_samples=8, max_work=300))


@pytest.fixture(scope="module")
def images(manifest) -> np.ndarray:
    from data_prep import make_loader

    x, _ = next(iter(make_loader(manifest, "test", 130, mode="eval")))
    return x.numpy()


def test_a_request_is_scored_per_slice_with_the_requests_seed(scorer, model, images):
    """k = 2: slices of 64 // 2 = 32 images, each the k-draw bound under the request's seed."""
    width = SLICE_IMAGES // 2
    out = scorer.run_request(images, {"k": 2, "seed": 4})
    expected = np.concatenate([
        score_levels(model, images[i:i + width], k=2, generator=4)
        for i in range(0, len(images), width)])
    np.testing.assert_array_equal(out, expected)
    # the same images sent as two requests split at a multiple of the slice: the same numbers
    split = np.concatenate([scorer.run_request(images[:64], {"k": 2, "seed": 4}),
                            scorer.run_request(images[64:], {"k": 2, "seed": 4})])
    np.testing.assert_array_equal(out, split)


def test_units_are_about_64_image_evaluations(scorer, images):
    steps = scorer.plan(images, {"k": 2})
    units = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            assert done.value.shape == (130,)
            break
        units += 1
    assert units == 5  # ceil(130 / 32) slices of 32 images x 2 draws


def test_work_over_the_budget_is_refused_before_any_work(scorer, images):
    with pytest.raises(BadRequest, match="130 images x k=3 = 390 image evaluations is over"):
        scorer.plan(images, {"k": 3})
    assert scorer.run_request(images[:100], {"k": 3}).shape == (100,)  # 300: at the budget


def test_samples_come_in_units_too(scorer):
    levels = scorer.run_request(None, {"mode": "sample", "n": 8, "temperature": 0.7})
    assert levels.shape == (8, 1, 8, 8) and levels.dtype == np.uint8 and levels.max() < 17


@pytest.mark.parametrize("depth", [5000, 900])
def test_deeply_nested_json_is_a_bad_request(scorer, depth):
    body = ('{"inputs": ' + "[" * depth + "]" * depth + "}").encode()
    with pytest.raises(BadRequest, match="nested too deeply|rectangular"):
        plan_request(scorer, body)


HUGE = "9" * 5000  # past Python's 4300-digit int-string limit: json.loads raises ValueError


@pytest.mark.parametrize("body", [
    f'{{"params": {{"mode": "sample", "n": {HUGE}}}}}',
    f'{{"params": {{"mode": "sample", "temperature": {HUGE}}}}}',
    f'{{"inputs": [[[[{HUGE}]]]]}}',
])
def test_a_5000_digit_integer_is_a_bad_request(scorer, body):
    with pytest.raises(BadRequest, match="integer literal over 4300 digits"):
        plan_request(scorer, body.encode())


@pytest.mark.parametrize(("params", "message"), [
    ({"mode": "sample", "n": 2, "temperature": True}, "'temperature' must be a number, got True"),
    ({"mode": "sample", "n": 2, "temperature": "0.7"}, "'temperature' must be a number"),
    ({"mode": "sample", "n": True}, "'n' must be an integer number of samples, got True"),
    ({"mode": "sample", "n": 2, "seed": True}, "'seed' must be an integer, got True"),
    ({"k": True}, "'k' must be an integer, got True"),
    ({"mode": "sample", "n": 2, "temperature": 10**4000},
     r"in \(0, 10\], got an integer of about 4000"),
    ({"mode": "sample", "n": 10**4000}, "between 1 and 8 samples, got an integer of about"),
    ({"k": -(10**300)}, "'k' must be between 1 and"),
])
def test_bools_are_not_numbers_and_huge_numbers_are_refused_in_process(scorer, images,
                                                                        params, message):
    """The pyfunc path (`FlowScorer.plan`, what `predict` runs) applies the same rules."""
    with pytest.raises(BadRequest, match=message):
        scorer.plan(images, params)


def test_parse_request_keeps_its_checks():
    with pytest.raises(BadRequest, match="Unknown params"):
        parse_request(b'{"inputs": [], "params": {"K": 1}}')
    x, params = parse_request(b'{"params": {"mode": "sample", "n": 2}}')
    assert x is None and params["n"] == 2
    with pytest.raises(BadRequest, match="'inputs' or as 'instances', not both"):
        parse_request(b'{"inputs": [[[[0]]]], "instances": [[[[0]]]]}')


def test_the_readme_sample_request_samples_with_its_seed(scorer):
    """README's request body (the form `mlflow models serve` takes too): its placeholder
    input is ignored and its params are the samples'."""
    body = readme_sample_request()
    assert json.loads(body)["inputs"] == [[[[0]]]]
    levels = run_to_end(plan_request(scorer, body))
    expected = scorer.run_request(None, {"mode": "sample", "n": 4, "temperature": 0.7,
                                         "seed": 0})
    np.testing.assert_array_equal(levels, expected)


@pytest.mark.parametrize("host, exposed", [
    ("127.0.0.1", False), ("localhost", False), ("::1", False), ("0.0.0.0", True),
    ("::", True), ("192.0.2.7", True), ("myhost", True)])
def test_which_hosts_are_reachable_from_the_network(host, exposed):
    assert reachable_from_network(host) is exposed


# --- the latent modes: encode, decode, interpolate, manipulate (`deploy/latent_requests.py`)


@pytest.fixture(scope="module")
def directions(model):
    """A hand-made direction per latent of the session Glow: `bright` and `tilted`."""
    from flows.attributes import Directions
    from flows.latents import latent_shapes

    rng = np.random.default_rng(0)
    vectors = {attribute: {name: rng.normal(0, 0.5, shape).astype(np.float32)
                           for name, shape in latent_shapes(model).items()}
               for attribute in ("bright", "tilted")}
    return Directions(vectors)


@pytest.fixture(scope="module")
def latent_scorer(model, directions) -> FlowScorer:
    return FlowScorer(model, {}, Limits(max_batch=256, max_samples=8, max_work=300),
                      directions=directions)


def _units(steps) -> tuple[int, np.ndarray]:
    units = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return units, done.value
        units += 1


def test_encode_then_decode_returns_the_levels_exactly_in_units(latent_scorer, model, images):
    """130 real test images: 3 units of at most 64 each way; the flat rows are the levels'
    latents of `flows.latents.encode_levels` concatenated in order (for a flow, FlowModel's z),
    and decoding them gives the images back exactly."""
    from flows.latents import encode_levels

    units, z = _units(latent_scorer.plan(images, {"mode": "encode"}))
    assert units == 3 and z.dtype == np.float32 and z.shape == (130, 64)
    named = encode_levels(model, images)
    np.testing.assert_array_equal(
        z, np.concatenate([named[k].reshape(130, -1) for k in sorted(named)], axis=1))
    units, levels = _units(latent_scorer.plan(z, {"mode": "decode"}))
    assert units == 3 and levels.dtype == np.uint8
    np.testing.assert_array_equal(levels, images)


def test_encode_and_decode_round_trip_through_json_bodies(latent_scorer, images):
    """The HTTP path (`plan_request`): an encode answer's predictions, sent back as a decode
    request's inputs, give the images exactly (float32 survives JSON's decimal form)."""
    body = json.dumps({"inputs": images[:5].tolist(), "params": {"mode": "encode"}})
    z = run_to_end(plan_request(latent_scorer, body.encode()))
    answer = json.dumps({"predictions": z.tolist()})  # what both servers send back
    body = json.dumps({"inputs": json.loads(answer)["predictions"], "params": {"mode": "decode"}})
    np.testing.assert_array_equal(run_to_end(plan_request(latent_scorer, body.encode())),
                                  images[:5])


def test_interpolate_is_the_fig5_strip_with_the_inputs_at_the_ends(latent_scorer, model, images):
    from flows.latents import interpolate

    strip = latent_scorer.run_request(images[:2], {"mode": "interpolate", "steps": 6})
    assert strip.shape == (8, 1, 8, 8) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip, interpolate(model, images[0], images[1], 6))
    np.testing.assert_array_equal(strip[[0, -1]], images[:2])
    assert not np.array_equal(strip[1], strip[0])


def test_manipulate_is_the_fig6_row_and_alpha_zero_is_the_image(latent_scorer, model, images,
                                                                directions):
    from flows.attributes import manipulate

    alphas = [-1, -0.5, 0, 0.5, 1]
    row = latent_scorer.run_request(images[3:4], {"mode": "manipulate", "attribute": "tilted",
                                                  "alphas": alphas})
    assert row.shape == (5, 1, 8, 8) and row.dtype == np.uint8
    np.testing.assert_array_equal(row, manipulate(model, images[3], directions.get("tilted"),
                                                  alphas))
    np.testing.assert_array_equal(row[2], images[3])
    assert not np.array_equal(row[4], images[3])  # the direction moves the image


def test_a_variational_models_ends_are_its_inputs(manifest, images):
    """VAE: latents are the posterior mean [B, 8]; the strip's ends and alpha 0 are the images
    themselves (a VAE's reconstruction is only approximate)."""
    import torch

    from flows import ModelConfig, build_model
    from flows.attributes import Directions

    torch.manual_seed(0)
    vae = build_model(ModelConfig(name="vae", image_shape=(1, 8, 8), n_bins=17, levels=1,
                                  hidden=16, latent_dim=8))
    scorer = FlowScorer(vae, directions=Directions({"up": {"mean": np.ones(8, np.float32)}}))
    z = scorer.run_request(images[:3], {"mode": "encode"})
    assert z.shape == (3, 8)
    assert scorer.run_request(z, {"mode": "decode"}).shape == (3, 1, 8, 8)
    strip = scorer.run_request(images[:2], {"mode": "interpolate", "steps": 2})
    np.testing.assert_array_equal(strip[[0, -1]], images[:2])
    row = scorer.run_request(images[:1], {"mode": "manipulate", "attribute": "up",
                                          "alphas": [0, 2]})
    np.testing.assert_array_equal(row[0], images[0])


ONE = np.zeros((1, 1, 8, 8), np.uint8)
TWO = np.zeros((2, 1, 8, 8), np.uint8)


@pytest.mark.parametrize(("x", "params", "message"), [
    (np.full((2, 1, 8, 8), 17), {"mode": "encode"}, r"Levels must lie in \[0, 17\)"),
    (np.zeros((2, 1, 8, 7), np.uint8), {"mode": "encode"}, "Expected shape"),
    (np.zeros((2, 63)), {"mode": "decode"}, r"Expected latents of shape \[B, 64\]"),
    (np.zeros((2, 1, 8, 8)), {"mode": "decode"}, r"Expected latents of shape \[B, 64\]"),
    (np.full((1, 64), np.nan), {"mode": "decode"}, "must be finite"),
    (np.full((1, 64), 1e300), {"mode": "decode"}, "within float32's range"),
    (np.zeros((1, 64), bool), {"mode": "decode"}, "as numbers, got dtype bool"),
    (np.zeros((257, 64)), {"mode": "decode"}, "1 to 256 latents"),
    (np.zeros((3, 1, 8, 8), np.uint8), {"mode": "interpolate"},
     r"'interpolate' takes exactly 2 images \[2, C, H, W\]"),
    (TWO, {"mode": "interpolate", "steps": 7}, r"between 0 and 6 \(steps \+ 2 frames"),
    (TWO, {"mode": "interpolate"}, "'steps' must be an integer between 0 and 6"),  # default 8
    (TWO, {"mode": "interpolate", "steps": 2.5}, "'steps' must be an integer"),
    (TWO, {"mode": "manipulate", "attribute": "bright"}, "exactly 1 image"),
    (ONE, {"mode": "manipulate"}, "needs 'attribute'.*: bright, tilted"),
    (ONE, {"mode": "manipulate", "attribute": "Smiling"},
     "Unknown attribute 'Smiling'; this model has directions for: bright, tilted"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": "-1,0,1"},
     r"'alphas' must be a list of numbers such as \[-1"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": [0, "1"]}, "list of numbers"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": [True]}, "list of numbers"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": [1e9]}, r"\[-100, 100\]"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": list(range(9))},
     "1 to 8 numbers"),
    (ONE, {"mode": "manipulate", "attribute": "bright", "alphas": []}, "1 to 8 numbers"),
    (ONE, {"mode": "reconstruct"}, "'mode' must be one of score, sample, encode, decode"),
])
def test_bad_latent_requests_are_refused_before_any_work(latent_scorer, x, params, message):
    with pytest.raises(BadRequest, match=message):
        latent_scorer.plan(x, params)


def test_latent_work_counts_every_image_encoded_and_frame_decoded(model, images):
    small = FlowScorer(model, {}, Limits(max_batch=256, max_samples=8, max_work=100))
    with pytest.raises(BadRequest, match="encoding 130 images = 130 image evaluations is over "
                                         "this model's budget of 100"):
        small.plan(images, {"mode": "encode"})
    with pytest.raises(BadRequest, match="decoding 101 latents = 101 image evaluations"):
        small.plan(np.zeros((101, 64)), {"mode": "decode"})
    tight = FlowScorer(model, {}, Limits(max_batch=256, max_samples=8, max_work=9))
    with pytest.raises(BadRequest, match="encoding 2 images and decoding 8 frames = 10 image"):
        tight.plan(images[:2], {"mode": "interpolate", "steps": 6})
    assert tight.run_request(images[:2], {"mode": "interpolate", "steps": 5}).shape[0] == 7


def test_directions_of_another_model_are_refused_at_load(model):
    from flows.attributes import Directions

    other = Directions({"bright": {"level0": np.zeros((2, 4, 4), np.float32),
                                   "level1": np.zeros((4, 2, 2), np.float32)}})
    with pytest.raises(ValueError, match="'bright' has latents .* the directions belong to "
                                         "another model"):
        FlowScorer(model, directions=other)


def test_a_model_without_directions_says_so(scorer):
    with pytest.raises(BadRequest, match="This model has no attribute directions"):
        scorer.plan(ONE, {"mode": "manipulate", "attribute": "bright"})


@pytest.mark.parametrize("mode, message", [
    ("encode", r"'encode' needs 'inputs': uint8 levels \[B, C, H, W\]"),
    ("decode", r"'decode' needs 'inputs': latents \[B, D\]"),
    ("interpolate", r"'interpolate' needs 'inputs': uint8 levels of two images"),
    ("manipulate", r"'manipulate' needs 'inputs': uint8 levels of one image"),
])
def test_a_latent_request_without_inputs_says_what_they_must_be(mode, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(json.dumps({"params": {"mode": mode}}).encode())


def test_the_readme_manipulate_request_moves_the_image(model, images):
    """README's manipulate body, with one real image for its placeholder, against a model
    holding a `Smiling` direction: len(alphas) frames, alpha 0 the image itself."""
    import re

    from helpers import REPO

    from flows.attributes import Directions
    from flows.latents import latent_shapes

    text = (REPO / "README.md").read_text().replace("\n", " ")
    found = re.findall(r'`(\{"inputs": \[<one image[^`]*)`', text)
    assert len(found) == 1 and '"mode": "manipulate"' in found[0], found
    body = re.sub(r"<one image[^>]*>", json.dumps(images[0].tolist()), found[0])
    vectors = {name: np.full(shape, 0.3, np.float32)
               for name, shape in latent_shapes(model).items()}
    scorer = FlowScorer(model, directions=Directions({"Smiling": vectors}))
    row = run_to_end(plan_request(scorer, body.encode()))
    alphas = json.loads(body)["params"]["alphas"]
    assert row.shape == (len(alphas), 1, 8, 8)
    np.testing.assert_array_equal(row[alphas.index(0)], images[0])

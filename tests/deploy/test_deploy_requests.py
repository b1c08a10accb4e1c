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

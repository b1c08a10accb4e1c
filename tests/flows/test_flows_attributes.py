"""Attribute directions (Glow Fig. 6) on a planted attribute: noise images, half of them with
a bright 2x2 square in a corner. A tiny flow trained on them in-process gives a "square"
direction along which the corner brightens monotonically; alpha = 0 is the input itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows import ModelConfig, build_model, initialize_from_batch
from flows.attributes import (
    Directions,
    compute_directions,
    load_directions,
    manipulate,
    save_directions,
)
from tests.train.train_helpers import TINY_MODELS

N_BINS = 16
ALPHAS = [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Levels [n, 1, 8, 8] of dim noise (0..5) and flags [n, 2]: "square" (every other image
    has levels 15 at rows/cols 6..7) and "none" (no image: left out of the directions)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, (n, 1, 8, 8)).astype(np.uint8)
    square = np.arange(n) % 2 == 0
    x[square, :, 6:, 6:] = N_BINS - 1
    return x, np.stack([square, np.zeros(n, bool)], axis=1)


def corner(levels: np.ndarray) -> np.ndarray:
    """The detector: the mean level of the square's corner, per image."""
    return levels[:, :, 6:, 6:].astype(np.float64).mean(axis=(1, 2, 3))


@pytest.fixture(scope="module")
def trained():
    """A tiny Glow fitted for 40 steps on the planted data (a plain loop on bits/dim): its
    couplings are off their identity init, so the direction is no longer a linear shift."""
    torch.manual_seed(0)
    x, flags = planted(512, seed=0)
    cfg = ModelConfig(**TINY_MODELS["glow"], image_shape=(1, 8, 8), n_bins=N_BINS)
    model = build_model(cfg)
    data = torch.from_numpy(x)
    initialize_from_batch(model, data[:256])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = data[torch.randint(0, len(data), (32,), generator=generator)]
        loss = model.bits_per_dim(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 3.2  # it learned (uniform over 16 levels: 4 bits/dim; the data 2.6)
    return model.eval(), x, flags


def test_the_corner_brightens_along_the_planted_direction(trained):
    model, x, flags = trained
    batches = [(x[i:i + 128], flags[i:i + 128]) for i in range(0, len(x), 128)]
    directions = compute_directions(model, batches, ["square", "none"])
    assert directions.names == ["square"]  # "none" is seen one way only: no direction
    assert directions.counts == {"square": (256, 256)}
    test, test_flags = planted(16, seed=1)
    for image in test[~test_flags[:, 0]][:4]:  # images without the square
        row = manipulate(model, image, directions.get("square"), ALPHAS)
        assert row.shape == (len(ALPHAS), 1, 8, 8) and row.dtype == np.uint8
        assert np.array_equal(row[ALPHAS.index(0.0)], image)
        brightness = corner(row)  # levels clip at 0: below the input's it may stay flat
        assert all(np.diff(brightness) >= 0), brightness
        assert all(np.diff(brightness[ALPHAS.index(0.0):]) > 0), brightness
        assert brightness[-1] > brightness[ALPHAS.index(0.0)] + 3, brightness  # toward 15
    with pytest.raises(KeyError, match="unknown attribute 'Smiling'; this model has directions "
                                       "for: square"):
        directions.get("Smiling")


def test_directions_file_round_trip(trained, tmp_path):
    model, x, flags = trained
    directions = compute_directions(model, [(x, flags)], ["square", "none"])
    back = load_directions(save_directions(directions, tmp_path / "attributes.safetensors"))
    assert back.names == directions.names and back.counts == directions.counts
    for name, vector in directions.get("square").items():
        assert np.array_equal(back.get("square")[name], vector)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors: not a readable attribute directions"):
        load_directions(tmp_path / "bad.safetensors")
    assert isinstance(back, Directions)

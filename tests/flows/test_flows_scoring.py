"""The scoring path's noise: one CPU generator, copied to the model's device (flows.scoring)."""

from __future__ import annotations

import pytest
import torch
from flows_helpers import ALL_CONFIGS, perturb_, tiny

from flows import build_model, initialize_from_batch
from flows.scoring import cpu_generator, sample_levels, score_levels

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CASES = {
    **{key: ALL_CONFIGS[key] for key in ("glow-affine-lu", "realnvp-affine", "vae", "fvae")},
    "glow-variational-dequant": tiny("glow", levels=1, steps=1, hidden=8,
                                     dequantization="variational", dequant_hidden=8,
                                     dequant_steps=1),
}


def _model_and_levels(key: str):
    cfg = CASES[key]
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.n_bins, (6, *cfg.image_shape), generator=torch.Generator()
                      .manual_seed(1))
    initialize_from_batch(model, x, generator=0)
    perturb_(model, 0.05)
    return model.eval(), x


def test_a_seed_is_uniform_noise_drawn_by_hand_on_the_cpu():
    model, x = _model_and_levels("glow-affine-lu")
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        by_hand = model.bits_per_dim(x, noise=u).double().numpy()
    assert (score_levels(model, x, generator=7) == by_hand).all()


@pytest.mark.parametrize("key", sorted(CASES))
@pytest.mark.parametrize("k", [1, 3])
def test_a_seed_is_the_cpu_stream_for_every_family(key, k):
    """Dequantisation (uniform or q(u|x)) and VAE / f-VAE latents: all from the CPU stream."""
    model, x = _model_and_levels(key)
    with torch.no_grad():
        by_hand = model.bits_per_dim(x, k=k, generator=torch.Generator().manual_seed(4))
    assert (score_levels(model, x, k=k, generator=4) == by_hand.double().numpy()).all()
    assert (score_levels(model, x, k=k, generator=4) != score_levels(model, x, k=k,
                                                                     generator=5)).any()


def test_no_seed_follows_torchs_global_cpu_stream():
    model, x = _model_and_levels("vae")
    torch.manual_seed(3)
    first = score_levels(model, x, generator=None)
    torch.manual_seed(3)
    assert (score_levels(model, x, generator=None) == first).all()
    assert cpu_generator(None).device.type == "cpu"


@CUDA
@pytest.mark.parametrize("key", sorted(CASES))
def test_the_same_seed_gives_the_same_bpd_and_samples_on_a_gpu(key):
    model, x = _model_and_levels(key)
    on_cpu = score_levels(model, x, k=3, generator=2)
    samples = sample_levels(model, 8, 0.7, generator=2)
    model.to("cuda")
    assert score_levels(model, x, k=3, generator=2) == pytest.approx(on_cpu, rel=1e-4)
    assert (sample_levels(model, 8, 0.7, generator=2) == samples).mean() > 0.99


@CUDA
def test_a_device_generator_is_refused():
    model, x = _model_and_levels("glow-affine-lu")
    with pytest.raises(ValueError, match="Expected a CPU torch.Generator"):
        score_levels(model.to("cuda"), x, generator=torch.Generator("cuda").manual_seed(0))

"""bf16 nets (`train.amp`): the coupling networks compute in bf16 from their first conv to
their output (their ActNorms do not promote back to float32); log-dets and the loss stay
float32."""

from __future__ import annotations

import pytest
import torch
from train_helpers import TINY_MODELS

from flows import build_model, initialize_from_batch
from flows.config import ModelConfig
from flows.layers.actnorm import ActNorm
from flows.layers.coupling import Coupling


@pytest.mark.parametrize("family", ["glow", "realnvp", "nice", "fvae"])
def test_bf16_nets_keep_bf16_inside_and_float32_logdets_and_loss(family):
    torch.manual_seed(0)
    config = ModelConfig(**TINY_MODELS[family], image_shape=(1, 8, 8), n_bins=17,
                         net_dtype="bfloat16")
    model = build_model(config)
    x = torch.randint(0, 17, (8, 1, 8, 8), dtype=torch.uint8)
    initialize_from_batch(model, x)
    inside, logdets = [], []

    def on_output(module, args, out):
        h = out[0] if isinstance(out, tuple) else out
        inside.append((type(module).__name__, h.dtype))
        if isinstance(module, ActNorm):
            logdets.append(out[1].dtype)

    nets = [c.net for c in model.modules() if isinstance(c, Coupling)]
    for net in nets:
        for name, module in net.named_modules():
            if name and "parametrizations" not in name:  # weight norm computes weights
                module.register_forward_hook(on_output)
    bpd = model(x)

    kinds = {name for name, _ in inside}
    assert {"ReLU"} <= kinds and ({"Conv2d"} <= kinds or {"Linear"} <= kinds)
    if family == "glow":
        assert {"ActNorm", "FeatureActNorm", "ZeroConv2d"} <= kinds
        assert logdets and set(logdets) == {torch.float32}
    assert {dtype for _, dtype in inside} == {torch.bfloat16}, inside
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()

"""Shared by the train tests: tiny model configs and a quick `train:` section."""

from __future__ import annotations

from typing import Any

# Small enough that one 2-epoch run on digits (8x8, 17 levels) trains in a second or two.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "glow": {"name": "glow", "levels": 1, "steps": 2, "hidden": 16},
    "realnvp": {"name": "realnvp", "levels": 1, "steps": 1, "hidden": 16, "res_blocks": 1},
    "nice": {"name": "nice", "steps": 2, "hidden": 16, "mlp_layers": 2},
    "vae": {"name": "vae", "levels": 1, "hidden": 16, "latent_dim": 8},
    "fvae": {"name": "fvae", "levels": 1, "steps": 2, "hidden": 16, "res_blocks": 1},
}


def tiny_train(model: str = "glow", **overrides: Any) -> dict[str, Any]:
    """A `train:` section for a quick run (global batch 64: 22 steps per epoch on digits)."""
    section: dict[str, Any] = {
        "model": TINY_MODELS[model],
        "epochs": 2,
        "batch_size": 64,
        "eval_k": 4,
        "log_every": 5,
        "sample_n": 16,
        "optim": {"lr": 2e-3, "warmup_steps": 10},
        "scaling": {"num_workers": 2},
        "collective_timeout_s": 60,
    }
    section.update(overrides)
    return section

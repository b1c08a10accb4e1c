"""Model families, by `ModelConfig.name`."""

from flows.models.fvae import FVAE
from flows.models.glow import Glow
from flows.models.nice import NICE
from flows.models.realnvp import RealNVP
from flows.models.vae import VAE

MODELS = {"glow": Glow, "realnvp": RealNVP, "nice": NICE, "vae": VAE, "fvae": FVAE}

__all__ = ["FVAE", "MODELS", "NICE", "VAE", "Glow", "RealNVP"]

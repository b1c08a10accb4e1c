"""nfpipe flows: Glow, RealNVP, NICE, VAE and f-VAE behind one DensityModel interface."""

from flows.api import DensityModel, FlowModel, VariationalModel, initialize_from_batch
from flows.build import build_model
from flows.config import ModelConfig
from flows.layers import LAYERS

__all__ = [
    "LAYERS",
    "DensityModel",
    "FlowModel",
    "ModelConfig",
    "VariationalModel",
    "build_model",
    "initialize_from_batch",
]

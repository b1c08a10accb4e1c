"""ModelConfig: the typed `train.model` section of pipeline.yaml.

One frozen pydantic model for every family; fields a family does not use are ignored by it
(each description says who reads it). `image_shape` and `n_bins` come from the dataset
manifest: the pipeline fills them with `cfg.model_copy(update=...)` before `build_model`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ModelName = Literal["glow", "realnvp", "nice", "vae", "fvae"]


class ModelConfig(BaseModel):
    """Hyperparameters of one density model (validated once, at the CLI edge)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ModelName = Field(description="Model family: glow | realnvp | nice | vae | fvae.")
    image_shape: tuple[int, int, int] | None = Field(
        default=None,
        description="(C, H, W) of the images; filled from the dataset manifest.",
    )
    n_bins: int | None = Field(
        default=None,
        ge=2,
        le=256,
        description="Number of discrete levels per sub-pixel (2**bits); filled from the "
        "dataset manifest.",
    )
    levels: int = Field(
        default=2,
        gt=0,
        description="Scales of the multi-scale flow (glow, realnvp, and the f-VAE flow F); "
        "stride-2 down-samplings of the VAE encoder. H and W must be divisible by 2**levels "
        "(realnvp: 2**(levels-1)).",
    )
    steps: int = Field(
        default=3,
        gt=0,
        description="Flow steps per scale: glow (and the f-VAE flow) ActNorm-1x1conv-coupling "
        "steps K; realnvp couplings per mask phase (paper: 3, the last scale gets steps+1 "
        "checkerboard couplings); nice the number of additive couplings.",
    )
    hidden: int = Field(
        default=64,
        gt=0,
        description="Width (channels or units) of every network: coupling conditioners, "
        "VAE / f-VAE encoder and decoder.",
    )
    coupling: Literal["affine", "additive"] = Field(
        default="affine",
        description="Coupling map for glow / realnvp / the f-VAE flow: affine (scale and "
        "shift) or additive (shift only, volume preserving). nice is always additive.",
    )
    invconv: Literal["lu", "plain"] = Field(
        default="lu",
        description="glow / f-VAE flow 1x1 convolution: LU-decomposed (O(C) log-det) or a "
        "plain matrix (slogdet).",
    )
    learn_prior: bool = Field(
        default=True,
        description="glow / f-VAE flow: learn the mean and log-scale of the top latent's "
        "Gaussian prior (zero-initialised, i.e. N(0, I) at the start; realnvp and nice use "
        "N(0, I)).",
    )
    res_blocks: int = Field(
        default=2,
        gt=0,
        description="Residual blocks in realnvp s/t networks and in the f-VAE encoder and "
        "decoder.",
    )
    mlp_layers: int = Field(
        default=4, gt=0, description="nice: hidden layers of each coupling's shift MLP."
    )
    latent_dim: int = Field(default=32, gt=0, description="vae: dimension of the latent z.")
    coupling_actnorm: bool = Field(
        default=True,
        description="glow / f-VAE flow: ActNorm after each hidden conv of the coupling "
        "network, those convs bias-free (as in the Glow reference code); false: plain convs "
        "with biases.",
    )
    squeeze: Literal["ordered", "plain"] = Field(
        default="ordered",
        description="realnvp: how the squeezed channels are ordered for the factor-out "
        "(the channel-wise couplings always follow the plain squeeze, as in Real NVP's code): "
        "ordered (Real NVP's code: the kept half is one colour of a spatial checkerboard, "
        "across all image channels) or plain (the halves split the image by colour).",
    )
    weight_norm: bool = Field(
        default=True,
        description="Weight normalisation of the hidden convs of the realnvp s/t ResNets and "
        "of the f-VAE encoder/decoder ResNets.",
    )
    vae_likelihood: Literal["logistic", "gaussian"] = Field(
        default="logistic",
        description="vae decoder: a discretised logistic over the levels x (its bits/dim bounds "
        "the discrete likelihood itself) or a Gaussian density on dequantised y.",
    )
    dequantization: Literal["uniform", "variational"] = Field(
        default="uniform",
        description="Exact flows: uniform noise u ~ U[0, 1)^D, or a learned conditional flow "
        "q(u|x) trained jointly (Flow++), bpd = (E_q[log q(u|x) - log p(y)] + D ln n_bins) / "
        "(D ln 2). vae / fvae: uniform only.",
    )
    dequant_steps: int = Field(
        default=4,
        gt=0,
        description="Variational dequantisation: conditional affine couplings in q(u|x).",
    )
    dequant_hidden: int = Field(
        default=32,
        gt=0,
        description="Variational dequantisation: width of q(u|x)'s networks.",
    )
    preprocess: Literal["auto", "none", "logit"] = Field(
        default="auto",
        description="Flows' preprocessing of y (part of the model, its log-det counts): "
        "logit, or none. auto = logit for realnvp and nice, none for glow (as in the "
        "papers' image setups; NICE's paper used a logistic prior instead). vae / fvae: "
        "auto or none only.",
    )
    logit_alpha: float = Field(
        default=0.05,
        gt=0.0,
        lt=0.5,
        description="Logit preprocessing: y -> logit(alpha + (1 - 2 alpha)(y + 0.5)); "
        "its log-det counts in the likelihood.",
    )
    fvae_sigma_init: float | None = Field(
        default=None,
        gt=0.0,
        description="fvae: initial value of the learned noise scales sigma1 (posterior) and "
        "sigma2 (decoder); None means half a bin width, 0.5 / n_bins.",
    )
    iwae_chunk: int = Field(
        default=16,
        gt=0,
        description="Importance samples (draws of dequantisation noise / q(u|x) / latents) "
        "evaluated per pass when scoring with k > 1, so k = 100+ on a batch stays within "
        "memory (a pass holds chunk x batch images).",
    )
    net_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32",
        description="Dtype of the coupling/conditioner networks (bfloat16 runs them under "
        "autocast); log-dets and priors are always float32.",
    )
    checkpoint_nets: bool = Field(
        default=False,
        description="Activation checkpointing of the coupling networks in training "
        "(recomputes them in backward: less memory, ~1/3 more compute).",
    )

    @property
    def uses_logit(self) -> bool:
        """Whether the flow starts with the logit transform (resolves `preprocess: auto`)."""
        if self.preprocess == "auto":
            return self.name in ("realnvp", "nice")
        return self.preprocess == "logit"

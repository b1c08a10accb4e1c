"""Typed settings of the `promote` and `deploy` sections of pipeline.yaml."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromoteConfig(_Section):
    """Register the evaluated model and move the `champion` alias when it is better."""

    model_name: str | None = Field(
        None, description="Registered model name (default: '{pipeline name}-{model family}', "
        "e.g. digits-glow).", min_length=1, max_length=200
    )
    margin: float = Field(
        0.0, ge=0.0, description="Bits/dim by which a challenger must beat the champion's val "
        "bpd (on the same val split; the test bpd is reported, never compared) to take the "
        "`champion` alias."
    )
    replace_on_new_dataset: bool = Field(
        False, description="Promote a challenger over a champion evaluated on a different "
        "dataset (other manifest fingerprint), whose bpd is not comparable. Off: the champion "
        "stays and the pipeline says why."
    )
    queue_timeout_s: float = Field(
        120.0, gt=0, description="How long a promotion waits for earlier registered versions "
        "still being decided (two pipelines finishing at once); one pending longer than this "
        "is marked abandoned (once) and never waited for again."
    )
    max_batch: int = Field(
        1024, gt=0, description="Most images (or latent rows) one `predict` call of the "
        "registered model accepts (stored with the model, enforced by any server)."
    )
    max_samples: int = Field(
        256, gt=0, description="Most images one `predict` call may return: samples, or "
        "the frames of interpolate / manipulate (stored with the model, enforced by any "
        "server)."
    )
    max_work: int = Field(
        8192, gt=0, description="Work budget of one request: images x k when scoring; "
        "images encoded plus frames decoded in the latent modes (stored with the model, "
        "enforced by any server; over it: 400)."
    )


class DeployConfig(_Section):
    """The smoke test at the end of the pipeline and the defaults of `nfpipe deploy`."""

    alias: str = Field(
        "champion", min_length=1, description="Registry alias the deploy stage and commands pull."
    )
    host: str = Field(
        "127.0.0.1", min_length=1, description="Address `nfpipe deploy serve` binds (loopback "
        "by default; 0.0.0.0 exposes it to the network)."
    )
    port: int = Field(5001, gt=0, lt=65536, description="Port of `nfpipe deploy serve`.")
    request_timeout_s: float = Field(
        60.0, gt=0, description="`nfpipe deploy serve`: a request not finished this many "
        "seconds after it arrived is dropped with 503 (its remaining work is not done)."
    )
    max_queue: int = Field(
        512, gt=0, description="`nfpipe deploy serve`: requests in progress at most; more get "
        "503 with Retry-After, and /ready says 503 while the queue is full."
    )
    smoke_samples: int = Field(
        16, gt=0, le=1024, description="Samples in the deploy stage's grid."
    )
    smoke_images: int = Field(
        32, gt=0, description="Test images the deploy stage scores through the pulled model."
    )
    temperature: float = Field(
        0.7, gt=0, description="Sampling temperature of the smoke grid and `deploy sample`."
    )
    seed: int = Field(0, ge=0, description="Seed of the smoke test's noise and samples.")

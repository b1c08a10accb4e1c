"""The GPU-specific code paths, tested on CPU: bf16 autocast, channels_last, checkpoints
written on a device, the non-finite guard without host syncs, use_gpu on a GPU-less Ray."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODELS, tiny_train

from flows import bpd, build_model, initialize_from_batch
from flows.config import ModelConfig
from flows.io import load_model, save_model
from flows.layers.base import InvertibleLayer
from flows.layers.coupling import Coupling
from flows.scoring import score_levels
from train import checkpoint
from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.guard import NonFiniteGuard, NonFiniteLossError
from train.loop import to_device, train_step
from train.optim import Adamax
from train.state import TrainState, build_state

DIGITS = {"image_shape": (1, 8, 8), "n_bins": 17}
ONE_RANK = WorkerInfo(threads=1)


def levels(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), dtype=torch.uint8, generator=g)


def tiny_state(family: str = "glow", **train) -> tuple[TrainConfig, TrainState]:
    cfg = TrainConfig.model_validate(tiny_train(family, scaling={"num_workers": 1}, **train))
    update = dict(DIGITS, net_dtype="bfloat16" if cfg.amp else "float32")
    return cfg, build_state(cfg, cfg.model.model_copy(update=update), ONE_RANK, levels())


@pytest.mark.parametrize("family", ["glow", "realnvp", "fvae"])
def test_bf16_autocast_runs_the_nets_in_bf16_and_keeps_logdets_and_priors_float32(family):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_MODELS[family], **DIGITS, net_dtype="bfloat16"))
    initialize_from_batch(model, levels())
    net_dtypes, layer_dtypes = [], []

    def on_net(module, args, out):
        net_dtypes.append(out.dtype)

    def on_layer(module, args, out):
        h, logdet = out
        layer_dtypes.append((type(module).__name__, h.dtype, logdet.dtype))

    inside_nets = {id(m) for c in model.modules() if isinstance(c, Coupling)
                   for m in c.net.modules()}  # a net's own ActNorms normalise, their log-det unused
    for module in model.modules():
        if isinstance(module, Coupling):
            for layer in module.net.modules():
                if isinstance(layer, torch.nn.Conv2d):
                    layer.register_forward_hook(on_net)
        elif isinstance(module, InvertibleLayer) and id(module) not in inside_nets:
            module.register_forward_hook(on_layer)  # ActNorm, 1x1 convs, split priors, ...
    bpd = model(levels())

    assert net_dtypes and set(net_dtypes) == {torch.bfloat16}  # the nets' convs: bf16
    assert layer_dtypes
    assert all(h == logdet == torch.float32 for _, h, logdet in layer_dtypes), layer_dtypes
    assert bpd.dtype == torch.float32 and torch.isfinite(bpd).all()


def test_a_model_trained_channels_last_saves_and_scores_like_the_default_layout(tmp_path):
    x, noise = levels(32, seed=1), torch.rand(3, 32, 1, 8, 8, generator=torch.Generator()
                                               .manual_seed(2))
    scores, bundles = {}, {}
    for layout in (False, True):
        cfg, state = tiny_state(channels_last=layout)
        for step in range(3):
            train_step(state, x, cfg, noise=noise[step])
        bundles[layout] = tmp_path / f"channels_last_{layout}"
        save_model(state.model, bundles[layout])
        loaded = load_model(bundles[layout])
        scores[layout] = score_levels(loaded, levels(64, seed=3), generator=0)
        trained = score_levels(state.model, levels(64, seed=3), generator=0)
        assert abs(trained - scores[layout]).max() < 1e-5  # round trip (the layout may differ)
        assert all(t.is_contiguous() for t in loaded.state_dict().values())

    assert abs(scores[True] - scores[False]).max() < 1e-5


def _as_if_saved_on(path: Path, device: str) -> None:
    """Rewrite a torch.save file so that every storage says it was saved on `device`.

    torch.save pickles each storage with its location string ("cpu", "cuda:0"), protocol 2:
    BINUNICODE = b"X" + 4-byte little-endian length + UTF-8. On a CPU-only machine this is
    the only way to produce the bytes a GPU worker writes.
    """
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pickle_name = next(name for name in members if name.endswith("/data.pkl"))
    old, new = b"cpu", device.encode()
    opcode = b"X" + len(old).to_bytes(4, "little") + old
    assert opcode in members[pickle_name]
    members[pickle_name] = members[pickle_name].replace(
        opcode, b"X" + len(new).to_bytes(4, "little") + new)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only load path")
def test_a_checkpoint_written_on_a_gpu_loads_and_resumes_on_cpu(tmp_path):
    cfg, state = tiny_state("glow", optim={"ema_decay": 0.9})
    for step in range(2):
        train_step(state, levels(seed=step), cfg)
    state.check_finite()
    checkpoint.save_state(tmp_path, state.snapshot())
    _as_if_saved_on(tmp_path / checkpoint.STATE_FILE, "cuda:0")

    with pytest.raises(RuntimeError, match="CUDA"):  # the file really names a CUDA device
        torch.load(tmp_path / checkpoint.STATE_FILE, weights_only=True)
    saved = checkpoint.load_state(tmp_path)  # map_location="cpu"
    assert all(t.device.type == "cpu" for t in saved["model"].values())
    resumed = build_state(cfg, state.model.config, ONE_RANK, resume=saved)

    # the resumed run continues exactly: weights, fused Adam's moments and step, EMA
    noise = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    for run in (state, resumed):
        train_step(run, levels(seed=5), cfg, noise=noise)
    assert resumed.step == state.step == 3
    for a, b in zip(resumed.snapshot()["model"].values(), state.snapshot()["model"].values(),
                    strict=True):
        assert torch.equal(a, b)
    for a, b in zip(resumed.ema.state_dict().values(), state.ema.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
def test_guard_skips_on_the_device_counts_and_names_the_step(optimizer):
    """Adam is fused and Adamax multi-tensor: both skip inside their kernels."""
    param = torch.nn.Parameter(torch.ones(3))
    opt = {"adam": lambda: torch.optim.Adam([param], lr=0.1, fused=True),
           "adamax": lambda: Adamax([param], lr=0.1)}[optimizer]()
    guard = NonFiniteGuard(torch.device("cpu"), max_in_row=2)
    norms = [1.0, float("nan"), 1.0, float("inf"), float("nan"), float("nan"), 1.0]
    seen = []
    for step, norm in enumerate(norms, 1):
        before = param.detach().clone()
        param.grad = torch.full((3,), norm)
        skipped = guard.step(opt, torch.tensor(norm))
        seen.append(bool(skipped))
        moved = not torch.equal(param.detach(), before)
        assert moved != bool(skipped), (step, norm)  # a skipped step leaves the weights

    assert seen == [False, True, False, True, True, True, False]
    assert int(opt.state[param]["step"]) == 3  # skipped steps are not counted as steps
    with pytest.raises(NonFiniteLossError, match="at step 5: 2 steps in a row"):
        guard.check()


def test_no_host_sync_in_the_training_step():
    """The step reads no tensor's value (`.item()`, `float()`, `bool()`...) but the levels of
    a CPU batch; the objective does not read a device batch's levels (the loop checks the
    host batch before the copy), shown here with a meta tensor, which cannot be read."""
    cfg, state = tiny_state("glow")
    x = levels()
    train_step(state, x, cfg)
    reads: list[tuple[str, str]] = []
    with _count_reads(reads):
        train_step(state, x, cfg)
    assert reads and {caller for _, caller in reads} == {"check_levels"}
    bpd._check_levels(torch.zeros(4, dtype=torch.uint8, device="meta"), 17)
    with pytest.raises(ValueError, match="levels in"):
        to_device(torch.full((1, 1, 8, 8), 17, dtype=torch.uint8), torch.device("cpu"), 17)
    reads.clear()
    with _count_reads(reads):  # the counter does see the guard's reads
        state.check_finite()
    assert reads


class _count_reads:
    """Record Python-level reads of tensor values as (method, calling function)."""

    METHODS = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self, reads: list):
        self.reads = reads
        self.saved = {}

    def __enter__(self):
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)
            self.saved[name] = original

            def wrapper(tensor, *args, _name=name, _original=original):
                self.reads.append((_name, sys._getframe(1).f_code.co_name))
                return _original(tensor, *args)

            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)


def test_use_gpu_on_a_ray_without_gpus_fails_fast(ray_local):
    """The train stage calls this before fitting on the embedded Ray (no waiting forever)."""
    from train.distributed import check_resources

    spec = TrainConfig.model_validate(
        tiny_train(scaling={"num_workers": 1, "use_gpu": True})).scaling
    with pytest.raises(ValueError, match=r"asks for 1 GPU \(1 workers\).*has 0 GPU"):
        check_resources(spec)
    check_resources(spec.model_copy(update={"use_gpu": False}))

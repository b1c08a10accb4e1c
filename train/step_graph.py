"""The whole training step captured in a CUDA graph and replayed per batch (`train.cuda_graphs`).

One step of the Glow CIFAR recipe launches about 10,000 small kernels, and on a GPU the host
spends about half the step launching them. A CUDA graph records the step's kernels once and
replays them with one launch, following PyTorch's whole-network capture recipe
(https://pytorch.org/docs/stable/notes/cuda.html#whole-network-capture):

1. warm-up: the first `WARMUP_STEPS` batches train eagerly on a side stream (cuDNN picks its
   algorithms, the optimiser creates its state, the allocator settles);
2. capture: the next batch's step is recorded into a `torch.cuda.CUDAGraph`, reading its input
   from a static batch buffer and its dequantisation noise from a static noise buffer, with
   gradients set to None first so that backward allocates them from the graph's private pool;
3. replay: every later batch is copied into the static buffer, fresh noise is drawn into the
   noise buffer (`uniform_` from the default generator, exactly as the eager step's
   `torch.rand` would), and the graph is replayed. The capture batch itself is trained by the
   first replay: every batch is one optimiser step, as in eager mode.

A batch of another shape than the captured one runs eagerly (the train loader drops partial
batches, so this happens only with a caller that does not). The outputs of a replayed step are
the graph's static tensors, overwritten by the next replay: read or copy them before then.

What the step may do, so that its replay equals the eager step (the contract with
`train.loop.train_step`):
- no host sync (`.item()`, `bool(tensor)`): capture fails on one;
- every value that changes from step to step (learning rate, EMA weight, step counts) lives in
  a device tensor that the step updates in place; a Python number read during capture, or a
  tensor attribute rebound to a new tensor (`self.t = self.t + 1`), is frozen at its captured
  value. `make_step` refuses a Python-float learning rate, and `GraphedStep` checks after the
  capture that the step left the tensors it holds (`held`) the same objects;
- the optimiser is `capturable` (its step counts on the device): `make_step` sets it, as the
  graph-capture health check of torch.optim requires (also for fused Adam);
- a torch LR scheduler (host-side: it `fill_`s the learning-rate tensor with the next value)
  is stepped on the host after every replay, as the eager step does; the EMA counts its
  updates and computes its debiased weight on the device (`train.optim.Ema`), and
  `make_step` refuses an EMA whose weight would be a Python float (it changes every step).

Not supported (a clear error at run start, in `make_step`): a non-CUDA device; DDP (PyTorch's
recipe builds DDP on a side stream and warms up 11 steps before capture: not done here); loss
hooks (fault injection changes the step by step number).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import torch

from train.config import TrainConfig
from train.ddp import WorkerInfo
from train.hooks import TrainHooks
from train.state import TrainState

WARMUP_STEPS = 3  # eager steps before capture (PyTorch's recipe; DDP would need 11)

Outputs = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, torch.Tensor | None], Outputs]  # (x, noise) -> outputs


class GraphBackend(Protocol):
    """How a step is warmed up, captured and replayed: CUDA's (`CudaGraphs`) or a test's."""

    def warmup_stream(self) -> contextlib.AbstractContextManager: ...

    def capture(self, run: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
        """Record `run`; return a function that replays it and the outputs it writes."""
        ...


class CudaGraphs:
    """The real backend: a side stream for the warm-up, `torch.cuda.CUDAGraph` for capture."""

    def __init__(self, device: torch.device):
        self.device = device
        self._side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup_stream(self) -> Iterator[None]:
        # eager warm-up on a side stream, ordered after (and before) the caller's stream
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            yield
        current.wait_stream(self._side)

    def capture(self, run: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
        graph = torch.cuda.CUDAGraph()
        # captured on the warm-up's stream: whatever a library set up lazily per stream
        # (cuBLAS workspaces) was set up there before the capture
        with torch.cuda.graph(graph, stream=self._side):
            outputs = run()
        return graph.replay, outputs


class GraphedStep:
    """`fn(x, noise)` warmed up, captured at the first batch after `warmup` and replayed.

    fn: the step, reading its input from `x` and its noise from `noise` (same shape as x, of
        `noise_dtype`); it must satisfy the module's contract.
    on_replay: the host bookkeeping of one step that a replay does not run (Python code runs
        only at capture), called after each replay but the capture batch's: the host step
        counter, a host-side LR scheduler.
    held: the tensors the step keeps between steps (guard counters, optimiser state); the
        capture must leave them the same objects, else a replay would read stale ones.
    """

    def __init__(self, fn: StepFn, backend: GraphBackend, noise_dtype: torch.dtype,
                 on_replay: Callable[[], None] = lambda: None,
                 held: Callable[[], dict[str, torch.Tensor]] = dict,
                 warmup: int = WARMUP_STEPS):
        self.fn, self.backend, self.noise_dtype = fn, backend, noise_dtype
        self.on_replay, self.held, self.warmup = on_replay, held, warmup
        self.calls = 0  # batches seen
        self.replays = 0
        self.static_x: torch.Tensor | None = None
        self.static_noise: torch.Tensor | None = None
        self._replay: Callable[[], None] | None = None
        self._outputs: Outputs = ()

    def __call__(self, x: torch.Tensor) -> Outputs:
        self.calls += 1
        if self.static_x is None:
            self.static_x = torch.empty_like(x)
            self.static_noise = torch.empty(x.shape, dtype=self.noise_dtype, device=x.device)
        if x.shape != self.static_x.shape or x.dtype != self.static_x.dtype:
            return self.fn(x, None)  # another shape: eagerly, noise drawn by the step
        self.static_x.copy_(x)
        self.static_noise.uniform_()
        if self.calls <= self.warmup:
            with self.backend.warmup_stream():
                return self.fn(self.static_x, self.static_noise)
        captured_now = self._replay is None
        if captured_now:
            self._capture()
        self._replay()
        self.replays += 1
        if not captured_now:  # the capture ran the step's Python once, for this batch
            self.on_replay()
        return self._outputs

    def _capture(self) -> None:
        before = {name: id(t) for name, t in self.held().items()}
        self._replay, self._outputs = self.backend.capture(
            lambda: self.fn(self.static_x, self.static_noise))
        rebound = sorted(name for name, t in self.held().items() if before.get(name) != id(t))
        if rebound:
            raise RuntimeError(
                f"train.cuda_graphs: the step replaced {', '.join(rebound)} with new tensors "
                "during capture; a replay would keep reading the old ones. Update them in "
                "place (copy_, add_) or set train.cuda_graphs: false")


def make_step(state: TrainState, cfg: TrainConfig, world: WorkerInfo, hooks: TrainHooks,
              train_step: Callable[..., Outputs],
              backend: GraphBackend | None = None) -> Callable[[torch.Tensor], Outputs]:
    """The per-batch step of the loop: `train_step` itself, or its CUDA-graphed replay when
    `cfg.cuda_graphs` (checked here, at run start: device, workers, hooks, learning rate)."""
    if not cfg.cuda_graphs:
        return lambda x: train_step(state, x, cfg, hooks)
    device = next(state.model.parameters()).device
    check_capturable(state, device, world, hooks, backend is not None)
    make_capturable(state.optimizer)

    def step(x: torch.Tensor, noise: torch.Tensor | None) -> Outputs:
        return train_step(state, x, cfg, hooks, noise=noise)

    host_scheduler = type(state.scheduler).__module__.startswith("torch.optim")

    def count_step() -> None:
        # what train_step does on the host, which a replay skips
        state.step += 1
        if host_scheduler:  # torch's schedulers compute the next LR on the host: fill_ it
            state.scheduler.step()  # into the LR tensor for the next replay (the captured
            # fill_ wrote the capture step's value, read by no later step)

    return GraphedStep(step, backend or CudaGraphs(device), state_dtype(state), count_step,
                       lambda: held_tensors(state))


def check_capturable(state: TrainState, device: torch.device, world: WorkerInfo,
                     hooks: TrainHooks, custom_backend: bool = False) -> None:
    """Raise ValueError, saying what to change, where the step cannot be captured."""
    if device.type != "cuda" and not custom_backend:
        raise ValueError(
            f"train.cuda_graphs: true needs a CUDA device, but this worker trains on {device}; "
            "set train.scaling.use_gpu: true on a GPU machine, or train.cuda_graphs: false")
    if world.distributed:
        raise ValueError(
            f"train.cuda_graphs with {world.world_size} workers (DDP) is not supported: set "
            "train.scaling.num_workers: 1 or train.cuda_graphs: false")
    if type(hooks).loss is not TrainHooks.loss:
        raise ValueError("train.cuda_graphs cannot replay loss hooks (fault injection changes "
                         "the step by step number); run without them")
    ema = state.ema
    if ema is not None and ema.debias and not isinstance(ema.weight(torch.ones(())),
                                                         torch.Tensor):
        raise ValueError(
            "train.cuda_graphs with optim.ema_debias: true needs the EMA weight (1-d)/(1-d^t) "
            "on the device (issue 19, part 2): it is a Python float here, which a graph would "
            "freeze; set optim.ema_debias: false or train.cuda_graphs: false")
    floats = [i for i, g in enumerate(state.optimizer.param_groups)
              if not isinstance(g["lr"], torch.Tensor)]
    if floats:
        raise ValueError(
            "train.cuda_graphs needs the learning rate as a device tensor (issue 19, part 2): "
            f"param group(s) {floats} hold a Python float, which a graph would freeze at its "
            "captured value; set train.cuda_graphs: false")


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Mark every param group `capturable` and keep the step counts on the parameters'
    device: torch.optim refuses to be captured otherwise (fused Adam included)."""
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].to(p.device)


def held_tensors(state: TrainState) -> dict[str, torch.Tensor]:
    """The tensors a step keeps between steps, by name: guard counters, optimiser state and
    learning rates (the parameters and EMA weights are updated in place by construction)."""
    held = {f"guard.{k}": v for k, v in vars(state.guard).items()
            if isinstance(v, torch.Tensor)}
    for i, group in enumerate(state.optimizer.param_groups):
        if isinstance(group["lr"], torch.Tensor):
            held[f"optimizer.param_groups[{i}].lr"] = group["lr"]
        for j, p in enumerate(group["params"]):
            for key, value in state.optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor):
                    held[f"optimizer.state[{i}.{j}].{key}"] = value
    return held


def state_dtype(state: TrainState) -> torch.dtype:
    """The dtype of the model's dequantisation noise (that of its float parameters)."""
    return next(p.dtype for p in state.model.parameters() if p.is_floating_point())

"""Search for the quickstart's default train recipe on the 8x8 digits (target: <= 1.95 test bpd).

A plain single-process training loop (no Ray, no MLflow) that mirrors what one Ray Train worker
of the train stage does: `flows.build_model`, data-dependent init on one batch, Adam/Adamax with
linear warmup and gradient-norm clipping, optional weight EMA, one optimiser step per GLOBAL
batch. It adds what the train stage does not have yet: a learning-rate decay after the warmup
(`--schedule cosine|step`), so a recipe that needs one can be told apart from one that does not.

`torch.set_num_threads(1)` mimics one Ray worker (`cpus_per_worker: 1`). A 2-worker DDP run of
the same recipe sees the same global batch per step, each worker computing half of it, so it
runs at roughly twice this script's steps/s (minus the gradient all-reduce, small for these
models); the wall times printed here are therefore about 2x the pipeline's training time on 2
idle cores. CPU seconds (`time.process_time`) are printed too: the box is shared, so wall time
is noisy and CPU time is the stable figure.

Every `--eval-every` epochs it prints the test bpd over the WHOLE test split (dequantisation
noise from a fixed seed, `bits_per_dim(x, generator=...)`, so every evaluation sees the same
noise), the same for a fixed 359-image slice of the train split (over-fitting shows as the gap),
and, with `--ema`, the EMA weights' test bpd.

    .venv/bin/python benchmarks/digits_recipe.py --list
    .venv/bin/python benchmarks/digits_recipe.py glow_logit_cosine
    .venv/bin/python benchmarks/digits_recipe.py glow_logit_cosine --set epochs=40 optim.lr=2e-3
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep import DataPrepConfig, make_loader, prepare  # noqa: E402
from flows import ModelConfig, build_model, initialize_from_batch  # noqa: E402

EVAL_SEED = 1234  # dequantisation noise of every evaluation
TRAIN_PROBE = 359  # train images scored alongside the test split (same count as test)

# Recipes in the train stage's terms (`train:` of pipeline.yaml), plus `schedule` (not an option
# of the train stage yet: constant = what it does today, linear warmup then constant lr).
BASE: dict[str, Any] = {
    "model": {"name": "glow", "levels": 2, "steps": 3, "hidden": 64, "coupling": "affine",
              "preprocess": "auto", "learn_prior": True},
    "optim": {"name": "adam", "lr": 1e-3, "warmup_steps": 200, "weight_decay": 0.0,
              "grad_clip": 50.0, "ema_decay": None},
    "epochs": 20,
    "batch_size": 64,
    "schedule": "constant",  # constant | cosine | step
    "min_lr_frac": 0.0,  # cosine floor / step factor base
    "seed": 0,
}


def _recipe(**over: Any) -> dict[str, Any]:
    r = copy.deepcopy(BASE)
    for key, value in over.items():
        _set(r, key, value)
    return r


def _set(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.replace("__", ".").split(".")
    node = recipe
    for part in path:
        node = node[part]
    if last not in node:
        raise KeyError(f"unknown recipe key {dotted!r}")
    node[last] = value


CANDIDATES: dict[str, dict[str, Any]] = {
    # the current defaults, for reference
    "glow_default": _recipe(),
    "glow_logit": _recipe(model__preprocess="logit"),
    "glow_logit_cosine": _recipe(model__preprocess="logit", optim__lr=2e-3, schedule="cosine",
                                 epochs=60),
    # the winner (see RESULTS.md, "digits recipe"): constant lr after warmup, EMA of weights
    "realnvp_ema": _recipe(model__name="realnvp", model__levels=2, model__steps=3,
                           model__hidden=64, model__preprocess="auto", optim__lr=2e-3,
                           optim__weight_decay=1e-3, optim__ema_decay=0.995, batch_size=32,
                           epochs=40),
    "realnvp_cosine": _recipe(model__name="realnvp", model__levels=2, model__steps=3,
                              model__hidden=64, optim__lr=1e-3, schedule="cosine", epochs=40),
}


def lr_factor(step: int, total: int, recipe: dict[str, Any]) -> float:
    """Linear warmup (as the train stage), then constant / cosine / step decay to the end."""
    warmup = max(recipe["optim"]["warmup_steps"], 1)
    if step < warmup:
        return (step + 1) / warmup
    kind, floor = recipe["schedule"], recipe["min_lr_frac"]
    t = min(1.0, (step - warmup) / max(total - warmup, 1))
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    if kind == "step":  # x0.3 at 50% and again at 75% of the post-warmup steps
        return 1.0 if t < 0.5 else (0.3 if t < 0.75 else 0.09)
    raise ValueError(f"unknown schedule {kind!r}")


class Ema:
    """θ̄ ← d·θ̄ + (1 − d)·θ over parameters; buffers copied (as pipeline.train.optim.Ema)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def load_split(manifest: Path, split: str) -> torch.Tensor:
    """The whole split as one uint8 tensor [N, C, H, W], in manifest order."""
    return torch.cat([x for x, _ in make_loader(manifest, split, 512, mode="eval")])


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, batch: int = 512) -> float:
    """Mean bpd over all of x, dequantisation noise from EVAL_SEED."""
    model.eval()
    gen = torch.Generator().manual_seed(EVAL_SEED)
    total = sum(float(model.bits_per_dim(x[i:i + batch], generator=gen).sum())
                for i in range(0, len(x), batch))
    model.train()
    return total / len(x)


def run(recipe: dict[str, Any], manifest: Path, eval_every: int, log: Path | None,
        max_wall: float | None, extra_ema: tuple[float, ...] = ()) -> dict[str, Any]:
    torch.manual_seed(recipe["seed"])
    train_x, test_x = load_split(manifest, "train"), load_split(manifest, "test")
    probe = train_x[:TRAIN_PROBE]
    meta = json.loads(Path(manifest).read_text())
    cfg = ModelConfig(**recipe["model"]).model_copy(
        update={"image_shape": tuple(meta["image_shape"]), "n_bins": meta["n_bins"]})
    model = build_model(cfg)
    o = recipe["optim"]
    bs = recipe["batch_size"]
    # the train stage initialises from rank 0's batch: half the global batch with 2 workers
    init = train_x[torch.randperm(len(train_x))[: max(bs // 2, 1)]]
    initialize_from_batch(model, model.dequantize(init, torch.Generator().manual_seed(7)))
    kind = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[o["name"]]
    opt = kind(model.parameters(), lr=o["lr"], weight_decay=o["weight_decay"])
    ema = Ema(model, o["ema_decay"]) if o["ema_decay"] else None
    extras = {d: Ema(model, d) for d in extra_ema}  # side EMAs: scored only, never exported
    steps_per_epoch = len(train_x) // bs  # full batches only, as the train loader
    total = steps_per_epoch * recipe["epochs"]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# {json.dumps(recipe)}\n# params={n_params} steps/epoch={steps_per_epoch} "
          f"total_steps={total} threads={torch.get_num_threads()}", flush=True)
    history = []
    t0, c0 = time.perf_counter(), time.process_time()
    step, running = 0, []

    def report(epoch: int) -> None:
        row = {"epoch": epoch, "step": step, "wall_s": round(time.perf_counter() - t0, 1),
               "cpu_s": round(time.process_time() - c0, 1),
               "lr": opt.param_groups[0]["lr"],
               "train_loss": round(sum(running) / len(running), 4) if running else None,
               "train_bpd": round(evaluate(model, probe), 4),
               "test_bpd": round(evaluate(model, test_x), 4)}
        if ema is not None:
            row["ema_test_bpd"] = round(evaluate(ema.module, test_x), 4)
            row["ema_train_bpd"] = round(evaluate(ema.module, probe), 4)
        for d, e in extras.items():
            row[f"ema{d}_test_bpd"] = round(evaluate(e.module, test_x), 4)
        history.append(row)
        print(json.dumps(row), flush=True)
        if log is not None:
            with open(log, "a") as f:
                f.write(json.dumps({"recipe": recipe, **row}) + "\n")

    report(0)
    stopped = False
    for epoch in range(1, recipe["epochs"] + 1):
        perm = torch.randperm(len(train_x))
        running = []
        for b in range(steps_per_epoch):
            x = train_x[perm[b * bs:(b + 1) * bs]]
            for g in opt.param_groups:
                g["lr"] = o["lr"] * lr_factor(step, total, recipe)
            loss = model(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"] or math.inf)
            step += 1
            if not torch.isfinite(gn):
                continue
            opt.step()
            if ema is not None:
                ema.update(model)
            for e in extras.values():
                e.update(model)
            running.append(float(loss.detach()))
        if max_wall and time.perf_counter() - t0 > max_wall:
            stopped = True
        if epoch % eval_every == 0 or epoch == recipe["epochs"] or stopped:
            report(epoch)
        if stopped:
            print(f"# stopped after epoch {epoch}: --max-wall {max_wall}s reached", flush=True)
            break
    best = min(history, key=lambda r: r["test_bpd"])
    final = history[-1]
    summary = {"final_test_bpd": final["test_bpd"], "final_train_bpd": final["train_bpd"],
               "best_test_bpd": best["test_bpd"], "best_epoch": best["epoch"],
               "wall_s": final["wall_s"], "cpu_s": final["cpu_s"], "params": n_params,
               "completed": not stopped}
    if ema is not None:
        summary["final_ema_test_bpd"] = final["ema_test_bpd"]
    print("# summary " + json.dumps(summary), flush=True)
    return summary


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidate", nargs="?", default="glow_logit_cosine",
                    help="a name from CANDIDATES (see --list)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override recipe keys, e.g. model.hidden=96 optim.lr=2e-3 epochs=40")
    ap.add_argument("--list", action="store_true", help="print the candidates and exit")
    ap.add_argument("--data-root", default="data/shards", help="data_prep output_root")
    ap.add_argument("--eval-every", type=int, default=5, help="epochs between evaluations")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = one Ray worker)")
    ap.add_argument("--max-wall", type=float, default=None,
                    help="stop (and evaluate) after the epoch that passes this many seconds")
    ap.add_argument("--extra-ema", type=float, nargs="*", default=[],
                    help="also keep EMAs with these decays and print their test bpd")
    ap.add_argument("--log", type=Path, default=None, help="append JSON rows to this file")
    args = ap.parse_args(argv)
    if args.list:
        for name, r in CANDIDATES.items():
            print(name, json.dumps(r))
        return
    torch.set_num_threads(args.threads)
    recipe = copy.deepcopy(CANDIDATES[args.candidate])
    for item in args.set:
        key, _, value = item.partition("=")
        _set(recipe, key, _parse_value(value))
    manifest = prepare(DataPrepConfig(dataset="digits", output_root=Path(args.data_root)))
    run(recipe, manifest, args.eval_every, args.log, args.max_wall, tuple(args.extra_ema))


if __name__ == "__main__":
    main()

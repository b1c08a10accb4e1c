"""Train one `train:` recipe on the 8x8 digits with the train stage's own loop, and print the
val bits/dim of every evaluation (how the quickstart's default recipe was chosen).

It runs `train.loop.train` in this process as a single rank (what a Tune trial does; no Ray,
no MLflow) with `torch.set_num_threads(--threads)`: one Ray worker of the train stage. A
2-worker DDP run of the same recipe takes the same global batch per step at roughly twice the
steps/s, so the times printed are about 2x the pipeline's training time on 2 idle cores. CPU
seconds (`time.process_time`) are printed too: the box is shared, so wall time is noisy.

Val bpd is the loop's own evaluation (the whole val split, fixed dequantisation noise), of the
EMA weights when the recipe keeps them; at the end, the epoch with the lowest val bpd (as the
train stage's checkpoint choice) is scored once on the test split (`test_bpd_of_best`, and
`val_minus_test`).

    .venv/bin/python benchmarks/digits_recipe.py --list
    .venv/bin/python benchmarks/digits_recipe.py realnvp_ema
    .venv/bin/python benchmarks/digits_recipe.py glow --set epochs=20 optim.lr=2e-3

`--ablation` trains every variant of `ABLATION` (for each family: the recipe changes off,
each change alone, all together) for `--seeds`, at a fixed compute budget (the same epochs,
batch and so optimiser steps for every variant), and prints a markdown table of val bpd at
k = 1 and k = `--k` (the importance-weighted bound, `train.eval_k`) at the last epoch, on the
val split (variants are compared there, never on test):

    nice -n 10 .venv/bin/python benchmarks/digits_recipe.py --ablation --seeds 0 1 \
        --set epochs=20 --log /tmp/ablation.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep import DataPrepConfig, Manifest, prepare  # noqa: E402
from flows.io import load_model  # noqa: E402
from train.checkpoint import model_bundle  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.ddp import WorkerInfo  # noqa: E402
from train.evaluation import evaluate  # noqa: E402
from train.loop import TrainJob, train  # noqa: E402

# Recipes in the train stage's terms (`train:` of pipeline.yaml); one rank, so num_workers 1.
BASE: dict[str, Any] = {
    "model": {"name": "glow", "levels": 2, "steps": 3, "hidden": 64, "coupling": "affine"},
    "optim": {"name": "adam", "lr": 1e-3, "warmup_steps": 200, "weight_decay": 0.0,
              "grad_clip": 50.0, "ema_decay": None},
    "epochs": 20,
    "batch_size": 64,
    "eval_every": 5,
    "seed": 0,
    "scaling": {"num_workers": 1},
    "sample_n": 16,
    "sample_temperatures": [1.0],
}


def recipe(**over: Any) -> dict[str, Any]:
    r = copy.deepcopy(BASE)
    for key, value in over.items():
        set_key(r, key, value)
    return r


def set_key(r: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.replace("__", ".").split(".")
    node = r
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


CANDIDATES: dict[str, dict[str, Any]] = {
    "glow": recipe(model__preprocess="logit"),
    "glow_ema": recipe(model__preprocess="logit", model__steps=6, model__hidden=96,
                       optim__lr=2e-3, optim__weight_decay=1e-3, optim__ema_decay=0.995,
                       batch_size=32, epochs=40),
    # the quickstart's recipe (pipeline.yaml): RealNVP, constant lr after warmup, weight EMA
    "realnvp_ema": recipe(model__name="realnvp", model__res_blocks=2, optim__lr=2e-3,
                          optim__weight_decay=1e-3, optim__ema_decay=0.995, batch_size=32,
                          epochs=40),
}


# The recipe changes (variational dequantisation, ActNorm in the nets, …), each as `train:`
# overrides, and their "off" settings.
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # name: (off, on)
    "net_actnorm": ({"model.coupling_actnorm": False}, {"model.coupling_actnorm": True}),
    "ordered_squeeze": ({"model.squeeze": "plain"}, {"model.squeeze": "ordered"}),
    "weight_norm": ({"model.weight_norm": False}, {"model.weight_norm": True}),
    "ema_debias": ({"optim.ema_debias": False}, {"optim.ema_debias": True}),
    "logistic": ({"model.vae_likelihood": "gaussian"}, {"model.vae_likelihood": "logistic"}),
    "var_deq": ({"model.dequantization": "uniform"},
                {"model.dequantization": "variational"}),
}

# family: (its recipe, the changes that apply to it)
ABLATION: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "glow": (CANDIDATES["glow_ema"], ("net_actnorm", "ema_debias", "var_deq")),
    "realnvp": (CANDIDATES["realnvp_ema"],
                ("ordered_squeeze", "weight_norm", "ema_debias", "var_deq")),
    "vae": (recipe(model__name="vae", model__levels=2, model__hidden=64, model__latent_dim=32,
                   optim__lr=1e-3, optim__ema_decay=0.995, batch_size=32, epochs=40),
            ("logistic", "ema_debias")),
    "fvae": (recipe(model__name="fvae", model__levels=2, model__steps=3, model__hidden=64,
                    model__res_blocks=1, optim__lr=1e-3, optim__ema_decay=0.995,
                    batch_size=32, epochs=40),
             ("net_actnorm", "weight_norm", "ema_debias")),
}


def ablation_variants(family: str) -> dict[str, dict[str, Any]]:
    """'baseline' (every change off), each change alone, and 'all' (every change on)."""
    base, changes = ABLATION[family]
    off = {k: v for name in changes for k, v in CHANGES[name][0].items()}

    def variant(on: tuple[str, ...]) -> dict[str, Any]:
        r = copy.deepcopy(base)
        for key, value in off.items():
            set_key(r, key, value)
        for name in on:
            for key, value in CHANGES[name][1].items():
                set_key(r, key, value)
        return r

    return {"baseline": variant(()), **{name: variant((name,)) for name in changes},
            "all": variant(changes)}


def run_ablation(args: argparse.Namespace, manifest: Path) -> None:
    """Every family's variants x seeds; one JSON line each to --log, then a markdown table."""
    results: list[dict[str, Any]] = []
    for family in args.families:
        for variant, raw in ablation_variants(family).items():
            for seed in args.seeds:
                raw = copy.deepcopy(raw)
                for item in [*args.set, f"seed={seed}", f"eval_k={args.k}"]:
                    key, _, value = item.partition("=")
                    set_key(raw, key, _parse_value(value))
                summary = run(TrainConfig.model_validate(raw), manifest, None)
                row = {"family": family, "variant": variant, "seed": seed, **summary}
                results.append(row)
                if args.log is not None:
                    with open(args.log, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(ablation_table(results, args.k))


def ablation_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: one row per (family, variant), seeds side by side and their mean."""
    lines = [f"| family | variant | val bpd k=1 (per seed) | mean | val bpd k={k} (per seed) "
             "| mean | CPU s / run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results:
        groups.setdefault((row["family"], row["variant"]), []).append(row)
    for (family, variant), rows in groups.items():
        k1 = [r["final_val_bpd"] for r in rows]
        kk = [r[f"final_val_bpd_k{k}"] for r in rows]
        cpu = sum(r["cpu_s"] for r in rows) / len(rows)
        lines.append(f"| {family} | {variant} | {' / '.join(f'{v:.4f}' for v in k1)} | "
                     f"{sum(k1) / len(k1):.4f} | {' / '.join(f'{v:.4f}' for v in kk)} | "
                     f"{sum(kk) / len(kk):.4f} | {cpu:.0f} |")
    return "\n".join(lines)


def run(cfg: TrainConfig, manifest: Path, log: Path | None) -> dict[str, Any]:
    """Train `cfg` in this process; one JSON row per evaluated epoch, then a summary with the
    test bpd of the epoch chosen on val (scored once, after training)."""
    rows: list[dict[str, Any]] = []
    chosen: dict[str, Any] = {}  # the lowest-val epoch's weights, as a checkpoint would keep
    t0, c0 = time.perf_counter(), time.process_time()

    def report(metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if "val_bpd" not in metrics:
            return
        row = {"epoch": int(metrics["epoch"]), "step": int(metrics["step"]),
               "wall_s": round(time.perf_counter() - t0, 1),
               "cpu_s": round(time.process_time() - c0, 1),
               "train_bpd": round(metrics.get("train_bpd", float("nan")), 4),
               "val_bpd": round(metrics["val_bpd"], 4),
               **{key: round(value, 4) for key, value in metrics.items()
                  if key.startswith("val_bpd_k")}}
        rows.append(row)
        if checkpoint_dir is not None and metrics["val_bpd"] < chosen.get("val_bpd", 1e9):
            chosen.update(val_bpd=metrics["val_bpd"], epoch=row["epoch"],
                          model=load_model(model_bundle(checkpoint_dir)))
        print(json.dumps(row), flush=True)
        if log is not None:
            with open(log, "a") as f:
                f.write(json.dumps({"recipe": cfg.model_dump(mode="json"), **row}) + "\n")

    print(f"# {cfg.model_dump_json()}\n# threads={torch.get_num_threads()}", flush=True)
    with tempfile.TemporaryDirectory() as run_dir:
        job = TrainJob(str(manifest), run_dir=run_dir, verbose=False)
        train(cfg, job, WorkerInfo(threads=torch.get_num_threads()), report)
    best = min(rows, key=lambda r: r["val_bpd"])
    test = evaluate(chosen["model"], Manifest.load(manifest), WorkerInfo(), batch_size=256,
                    seed=cfg.seed, split="test")
    summary = {"final_val_bpd": rows[-1]["val_bpd"], "best_val_bpd": best["val_bpd"],
               "best_epoch": best["epoch"], "test_bpd_of_best": round(test.bpd, 4),
               "val_minus_test": round(chosen["val_bpd"] - test.bpd, 4),
               "wall_s": rows[-1]["wall_s"], "cpu_s": rows[-1]["cpu_s"],
               **{f"final_{key}": value for key, value in rows[-1].items()
                  if key.startswith("val_bpd_k")}}
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
    ap.add_argument("candidate", nargs="?", default="realnvp_ema",
                    help="a name from CANDIDATES (see --list)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override train keys, e.g. model.hidden=96 optim.lr=2e-3 epochs=40")
    ap.add_argument("--list", action="store_true", help="print the candidates and exit")
    ap.add_argument("--data-root", default="data/shards", help="data_prep output_root")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = one Ray worker)")
    ap.add_argument("--log", type=Path, default=None, help="append JSON rows to this file")
    ap.add_argument("--ablation", action="store_true",
                    help="run the recipe-change ablation (every family's variants x --seeds)")
    ap.add_argument("--families", nargs="*", default=list(ABLATION), choices=list(ABLATION))
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    ap.add_argument("--k", type=int, default=64, help="ablation: draws of the k-sample bound")
    args = ap.parse_args(argv)
    if args.list:
        for name, r in CANDIDATES.items():
            print(name, json.dumps(r))
        return
    torch.set_num_threads(args.threads)
    if args.ablation:
        manifest = prepare(DataPrepConfig(dataset="digits", output_root=Path(args.data_root)))
        run_ablation(args, manifest)
        return
    raw = copy.deepcopy(CANDIDATES[args.candidate])
    for item in args.set:
        key, _, value = item.partition("=")
        set_key(raw, key, _parse_value(value))
    manifest = prepare(DataPrepConfig(dataset="digits", output_root=Path(args.data_root)))
    run(TrainConfig.model_validate(raw), manifest, args.log)


if __name__ == "__main__":
    main()

"""`nfpipe models list` and `nfpipe deploy sample|score|serve` (encode, decode, reconstruct,
interpolate: `pipeline/cli/latents.py`).

The tracking URI is `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the pipeline config's
`mlflow.tracking_uri` (`--pipeline`, default ./pipeline.yaml). `--model` takes `NAME@ALIAS`,
`NAME/VERSION`, `NAME` (its `deploy.alias`, default champion) or any MLflow model URI; left
out, it is the pipeline's registered model at `deploy.alias`.

Exit codes (see `pipeline.cli.report_error`): 0 done, 1 the registry or model failed, 2 a bad
argument or input.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from pipeline.cli.args import UsageError, config_from_args, needs_action

if TYPE_CHECKING:  # the config models load only when a command runs (a fast --help)
    from pipeline.config import PipelineConfig


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Add `models` and `deploy` to the `nfpipe` command line."""
    models = sub.add_parser("models", help="models in the MLflow Model Registry")
    needs_action(models)
    models_sub = models.add_subparsers(metavar="ACTION")
    ls = models_sub.add_parser("list", help="registered models: versions, aliases, test bpd")
    _common(ls)
    ls.add_argument("--name", default=None, help="only this registered model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_models_list)

    deploy = sub.add_parser("deploy", help="sample, score, serve, encode, decode, reconstruct, "
                                 "interpolate or manipulate with a registered model")
    needs_action(deploy)
    deploy_sub = deploy.add_subparsers(metavar="ACTION")
    sample = deploy_sub.add_parser("sample", help="draw samples and write a PNG grid")
    _common(sample, model=True)
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: deploy.temperature, 0.7)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--nrow", type=int, default=None, help="images per grid row")
    sample.add_argument("--scale", type=int, default=1,
                        help="enlarge every pixel to SCALE x SCALE (nearest neighbour; "
                        "default 1)")
    sample.add_argument("--out", type=Path, default=Path("samples.png"),
                        help="PNG grid to write; a name ending in .npy gets the raw levels "
                        "instead (uint8 [N, C, H, W], which `deploy score` reads back)")
    sample.set_defaults(func=cmd_sample)

    score = deploy_sub.add_parser("score", help="bits/dim of images (PNG files, shard tars, "
                                     ".npy level arrays)")
    _common(score, model=True)
    images_arg(score)
    score.add_argument("--k", type=int, default=1,
                       help="also the importance-weighted bound with k draws per image "
                       "(noise, and latents for VAE / f-VAE), beside k=1 (default 1)")
    score.add_argument("--seed", type=int, default=0, help="dequantization seed (default 0)")
    score.add_argument("--batch-size", type=int, default=256,
                       help="images per request to the model (rounded down to a multiple of "
                       "64; default 256)")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(func=cmd_score)

    serve = deploy_sub.add_parser("serve", help="serve the model over HTTP (/invocations)")
    _common(serve, model=True)
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 5001)")
    serve.add_argument("--timeout", type=float, default=None,
                       help="seconds a request may take (default deploy.request_timeout_s, 60)")
    serve.set_defaults(func=cmd_serve)

    from pipeline.cli.latents import register_latent_commands

    register_latent_commands(deploy_sub, _common)


def _common(parser: argparse.ArgumentParser, model: bool = False) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the "
                        "pipeline config's mlflow.tracking_uri)")
    parser.add_argument("--pipeline", type=Path, default=None,
                        help="pipeline file for defaults (default: ./pipeline.yaml if present)")
    parser.add_argument("--profile", default=None, help="profile of the pipeline file")
    if model:
        parser.add_argument("--model", default=None,
                            help="NAME@ALIAS, NAME/VERSION, NAME or a model URI (default: the "
                            "pipeline's model at deploy.alias)")


def images_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="IMAGE_OR_SHARD",
                        help="PNG files of levels, webdataset .tar shards or .npy level arrays")


# --- configuration -----------------------------------------------------------------------


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    """The pipeline config named by --pipeline (or ./pipeline.yaml), else the defaults."""
    return config_from_args(argparse.Namespace(pipeline=args.pipeline, profile=args.profile,
                                               sets=[]))


def tracking_uri(args: argparse.Namespace, cfg: PipelineConfig | None = None) -> str:
    """The store to use, checked to answer (a server that is not there fails in seconds)."""
    from tracking import absolute_tracking_uri, check_reachable

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (cfg or pipeline_config(args)).mlflow.tracking_uri
    uri = absolute_tracking_uri(uri)
    check_reachable(uri)
    return uri


def store_and_config(args: argparse.Namespace) -> tuple[str, PipelineConfig]:
    from deploy.load import model_uri
    from pipeline.config import registered_model_name
    from tracking import use_store

    cfg = pipeline_config(args)
    uri = tracking_uri(args, cfg)
    use_store(uri)
    name = registered_model_name(cfg)
    return model_uri(getattr(args, "model", None), name, cfg.deploy.alias), cfg


# --- commands ------------------------------------------------------------------------------


def cmd_models_list(args: argparse.Namespace) -> int:
    from deploy.registry import list_models
    from tracking import client, mask_url_credentials

    uri = tracking_uri(args)
    rows = list_models(client(uri), args.name)
    shown = mask_url_credentials(uri)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        Console().print(f"no registered models in {shown}")
        return 0
    table = Table(title=f"registered models ({shown})", box=box.SIMPLE_HEAD, title_justify="left")
    # test bpd: reported, k = 1 and at k; val bpd: what promotion compared
    numbers = ("test bpd", "test bpd at k", "val bpd")
    for column in ("model", "v", "aliases", *numbers, "dataset", "manifest", "decision"):
        table.add_column(column, justify="right" if column in ("v", *numbers) else "left",
                         no_wrap=True)
    for row in rows:
        at_k = ", ".join(f"{v:.4f} (k={k})" for k, v in row.get("test_bpd_k", {}).items())
        table.add_row(row["model"], str(row["version"]), ", ".join(row["aliases"]),
                      _bpd_text(row["test_bpd"]), at_k, _bpd_text(row.get("val_bpd")),
                      row["dataset"], row["manifest_fingerprint"][:8], row["promotion"])
    table_console().print(table)
    return 0


def _bpd_text(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table_console() -> Console:
    """The terminal's width on a terminal; elsewhere (a pipe, a file) wide enough for any row,
    so tables are never cut to rich's default of 80 columns."""
    console = Console()
    return console if console.is_terminal else Console(width=10_000)


def cmd_sample(args: argparse.Namespace) -> int:
    from flows.viz import save_level_grid

    check_scale(args.scale)
    uri, cfg = store_and_config(args)
    temperature = cfg.deploy.temperature if args.temperature is None else args.temperature
    model, info = load_scorer(uri)
    levels = _request(model, None, {"mode": "sample", "n": args.n, "temperature": temperature,
                                     "seed": args.seed})
    if args.out.suffix == ".npy":
        path = save_levels(levels, args.out)
    else:
        path = save_level_grid(levels, model.n_bins, args.out, args.nrow, args.scale)
    Console().print(f"{args.n} samples of {uri} (v{info['version']}) at T={temperature} "
                    f"-> {path}", highlight=False)
    return 0


def check_scale(scale: int) -> None:
    if not 1 <= scale <= 64:
        raise UsageError(f"--scale must be between 1 and 64, got {scale}")


def save_levels(levels, out: Path) -> Path:
    """The samples' integer levels as a .npy file (uint8 [N, C, H, W])."""
    import numpy as np

    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.asarray(levels).astype(np.uint8), allow_pickle=False)
    return out


def cmd_score(args: argparse.Namespace) -> int:
    from deploy.images import read_images

    uri, _ = store_and_config(args)
    warnings = Console(stderr=True, highlight=False, soft_wrap=True)
    names, images = stack_images(read_images(args.paths, warn=warnings.print))
    model, info = load_scorer(uri)
    check_shapes(names, images, model.image_shape)

    bpd = score_images(model, images, 1, args.seed, args.batch_size)
    at_k = (score_images(model, images, args.k, args.seed, args.batch_size)
            if args.k > 1 else None)  # the k-draw bound, beside k = 1
    rows = [{"image": n, "bpd": float(b)} for n, b in zip(names, bpd, strict=True)]
    result = {"model_uri": uri, "version": info["version"], "k": args.k, "seed": args.seed,
              "mean_bpd": float(bpd.mean()), "scores": rows}
    if at_k is not None:
        result[f"mean_bpd_k{args.k}"] = float(at_k.mean())
        for row, value in zip(rows, at_k, strict=True):
            row[f"bpd_k{args.k}"] = float(value)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"bits/dim under {uri} (v{info['version']})")
    table.add_column("image")
    table.add_column("bits/dim (k=1)", justify="right")
    if at_k is not None:
        table.add_column(f"k={args.k}", justify="right")
    for row in rows:
        table.add_row(row["image"], *[f"{v:.4f}" for k, v in row.items() if k != "image"])
    means = [result["mean_bpd"], *([result[f"mean_bpd_k{args.k}"]] if at_k is not None else [])]
    table.add_row("[bold]mean[/]", *[f"[bold]{m:.4f}[/]" for m in means])
    table_console().print(table)
    return 0


def score_images(model, images: list, k: int, seed: int, batch_size: int):
    """Bits/dim [N] of levels [C, H, W] each, in requests of `request_size` images."""
    import numpy as np

    step = request_size(batch_size, k, model.limits)
    return np.concatenate([
        _request(model, np.stack(images[i:i + step]), {"k": k, "seed": seed})
        for i in range(0, len(images), step)
    ])


def request_size(batch_size: int, k: int, limits) -> int:
    """Images per request: within max_batch and the work budget, a multiple of the model's
    slice of max(1, 64 // k) images when larger (so the numbers match one server request of
    the same images)."""
    from deploy.pyfunc import SLICE_IMAGES

    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    width = max(1, SLICE_IMAGES // k)
    size = max(1, min(batch_size, limits.max_batch, limits.max_work // k))
    return size - size % width if size >= width else size


def cmd_serve(args: argparse.Namespace) -> int:
    from deploy.serve import ServeOptions, bind_listener, reachable_from_network, serve

    uri, cfg = store_and_config(args)
    host = args.host or cfg.deploy.host
    port = cfg.deploy.port if args.port is None else args.port
    timeout = cfg.deploy.request_timeout_s if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout}")
    listener = bind_listener(host, port)  # a bad address fails here, before anything is loaded
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if reachable_from_network(host):
        err.print(f"[yellow]warning:[/] listening on {host}: the server is reachable from the "
                  "network, with no authentication; use --host 127.0.0.1 to keep it local")
    try:
        model, info = load_scorer(uri)
    except BaseException:
        listener.close()
        raise
    err.print(f"serving {uri} (v{info['version']}) on http://{host}:{port}  "
              "(GET /health, GET /ready, POST /invocations)")
    serve(model, listener, info, ServeOptions(timeout, cfg.deploy.max_queue))
    return 0


def load_scorer(uri: str):
    from deploy.load import load_served

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line, no bars
    model, info = load_served(uri)
    if not info["verified"]:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[yellow]warning:[/] {uri} is not a registered version, so its weights are not "
            "checked against a recorded sha256")
    return model, info


def _request(model, x, params: dict[str, Any]):
    from deploy.pyfunc import BadRequest

    try:
        return model.run_request(x, params)
    except BadRequest as err:
        raise UsageError(str(err)) from None


def stack_images(found) -> tuple[list[str], list]:
    names, images = [], []
    for name, image in found:
        names.append(name)
        images.append(image)
    if not images:
        raise UsageError("no images found in the given files")
    return names, images


def check_shapes(names: list[str], images: list, shape: tuple[int, int, int]) -> None:
    for name, image in zip(names, images, strict=True):
        if tuple(image.shape) != tuple(shape):
            raise UsageError(f"{name}: image of shape {list(image.shape)} (C, H, W), but the "
                             f"model expects {list(shape)}")

"""`nfpipe models list` and `nfpipe deploy sample|score|serve`.

The tracking URI is `--tracking-uri`, else `MLFLOW_TRACKING_URI`, else the pipeline config's
`mlflow.tracking_uri` (`--pipeline`, default ./pipeline.yaml). `--model` takes `NAME@ALIAS`,
`NAME/VERSION`, `NAME` (its `deploy.alias`, default champion) or any MLflow model URI; left
out, it is the pipeline's registered model at `deploy.alias`.

Exit codes: 0 done, 1 the registry or model failed, 2 a bad argument or input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument or input: printed without a traceback, exit code 2."""


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Add `models` and `deploy` to the `nfpipe` command line."""
    models = sub.add_parser("models", help="models in the MLflow Model Registry")
    models_sub = models.add_subparsers(metavar="ACTION")
    ls = models_sub.add_parser("list", help="registered models: versions, aliases, test bpd")
    _common(ls)
    ls.add_argument("--name", default=None, help="only this registered model")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_models_list)

    deploy = sub.add_parser("deploy", help="sample, score or serve a registered model")
    deploy_sub = deploy.add_subparsers(metavar="ACTION")
    sample = deploy_sub.add_parser("sample", help="draw samples and write a PNG grid")
    _common(sample, model=True)
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature (default: deploy.temperature, 0.7)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--nrow", type=int, default=None, help="images per grid row")
    sample.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write")
    sample.set_defaults(func=cmd_sample)

    score = deploy_sub.add_parser("score", help="bits/dim of images (PNG files or shard tars)")
    _common(score, model=True)
    score.add_argument("paths", nargs="+", metavar="IMAGE_OR_SHARD",
                       help="PNG files of levels, or webdataset .tar shards")
    score.add_argument("--k", type=int, default=1, help="noise / importance samples (default 1)")
    score.add_argument("--seed", type=int, default=0, help="dequantization seed (default 0)")
    score.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(func=cmd_score)

    serve = deploy_sub.add_parser("serve", help="serve the model over HTTP (/invocations)")
    _common(serve, model=True)
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port (default 5001)")
    serve.set_defaults(func=cmd_serve)


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


def _guarded(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (UsageError, FileNotFoundError, ValueError) as err:
            Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
            return EXIT_USAGE
        except Exception as err:  # registry down, model missing…: say so, no traceback
            from mlflow.exceptions import MlflowException

            if not isinstance(err, (MlflowException, OSError, ConnectionError)):
                raise
            Console(stderr=True).print(f"[bold red]failed:[/] {err}", highlight=False)
            return EXIT_FAILED

    run.__name__ = handler.__name__
    return run


# --- configuration -----------------------------------------------------------------------


def pipeline_config(args: argparse.Namespace):
    """The pipeline config named by --pipeline (or ./pipeline.yaml), else the defaults."""
    from pipeline.config import load_config

    path = getattr(args, "pipeline", None)
    if path is None and Path("pipeline.yaml").exists():
        path = Path("pipeline.yaml")
    return load_config(path, getattr(args, "profile", None))


def tracking_uri(args: argparse.Namespace, cfg=None) -> str:
    from pipeline.tracking import absolute_tracking_uri

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (cfg or pipeline_config(args)).mlflow.tracking_uri
    return absolute_tracking_uri(uri)


def model_uri(spec: str | None, default_name: str, alias: str) -> str:
    """`NAME@ALIAS`, `NAME/VERSION`, `NAME` or a URI -> an MLflow model URI."""
    spec = spec or default_name
    if "://" in spec or spec.startswith(("models:/", "runs:/")) or Path(spec).exists():
        return spec
    if "@" in spec or "/" in spec:
        return f"models:/{spec}"
    return f"models:/{spec}@{alias}"


def _setup(args: argparse.Namespace) -> tuple[str, Any]:
    import mlflow

    from deploy.registry import model_name_for

    cfg = pipeline_config(args)
    uri = tracking_uri(args, cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = model_name_for(cfg)
    return model_uri(getattr(args, "model", None), name, cfg.deploy.alias), cfg


def load_served(uri: str):
    """(FlowPyfunc, info) for a model URI, with the version an alias resolved to."""
    import mlflow

    from deploy.pyfunc import FlowPyfunc

    pyfunc = mlflow.pyfunc.load_model(uri)
    model = pyfunc.unwrap_python_model()
    if not isinstance(model, FlowPyfunc) and type(model).__name__ != "FlowPyfunc":
        raise UsageError(f"{uri} is not an nfpipe model (its pyfunc is {type(model).__name__})")
    info = {"model_uri": uri, "version": _resolved_version(uri),
            "run_id": model.meta.get("run_id"), "dataset": model.meta.get("dataset")}
    return model, info


def _resolved_version(uri: str) -> str | None:
    from deploy.registry import champion_version, client_for

    if not uri.startswith("models:/"):
        return None
    ref = uri[len("models:/"):]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        holder = champion_version(client_for(), name, alias)
        return str(holder.version) if holder else None
    return ref.split("/", 1)[1] if "/" in ref else None


# --- commands ------------------------------------------------------------------------------


@_guarded
def cmd_models_list(args: argparse.Namespace) -> int:
    from deploy.registry import client_for, list_models

    uri = tracking_uri(args)
    rows = list_models(client_for(uri), args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        Console().print(f"no registered models in {uri}")
        return EXIT_OK
    table = Table(title=f"registered models ({uri})", box=box.SIMPLE_HEAD)
    for column in ("model", "v", "aliases", "test bpd", "dataset", "manifest", "decision"):
        table.add_column(column, justify="right" if column in ("v", "test bpd") else "left",
                         no_wrap=True)
    for row in rows:
        bpd = "" if row["test_bpd"] is None else f"{row['test_bpd']:.4f}"
        table.add_row(row["model"], str(row["version"]), ", ".join(row["aliases"]), bpd,
                      row["dataset"], row["manifest_fingerprint"][:8], row["promotion"])
    Console().print(table)
    return EXIT_OK


@_guarded
def cmd_sample(args: argparse.Namespace) -> int:
    from deploy.images import save_level_grid

    uri, cfg = _setup(args)
    temperature = cfg.deploy.temperature if args.temperature is None else args.temperature
    model, info = load_served(uri)
    levels = _request(model, None, {"mode": "sample", "n": args.n, "temperature": temperature,
                                     "seed": args.seed})
    path = save_level_grid(levels, model.n_bins, args.out, args.nrow)
    Console().print(f"{args.n} samples of {uri} (v{info['version']}) at T={temperature} "
                    f"-> {path}", highlight=False)
    return EXIT_OK


@_guarded
def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np

    from deploy.images import read_images

    uri, _ = _setup(args)
    names, images = _stack(read_images(args.paths))
    model, info = load_served(uri)
    _check_shapes(names, images, model.image_shape)
    step = max(1, min(args.batch_size, model.limits.max_batch))
    bpd = np.concatenate([
        _request(model, np.stack(images[i:i + step]), {"k": args.k, "seed": args.seed})
        for i in range(0, len(images), step)
    ])
    rows = [{"image": n, "bpd": float(b)} for n, b in zip(names, bpd, strict=True)]
    result = {"model_uri": uri, "version": info["version"], "k": args.k, "seed": args.seed,
              "mean_bpd": float(bpd.mean()), "scores": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    table = Table(title=f"bits/dim under {uri} (v{info['version']}, k={args.k})")
    table.add_column("image")
    table.add_column("bits/dim", justify="right")
    for row in rows:
        table.add_row(row["image"], f"{row['bpd']:.4f}")
    table.add_row("[bold]mean[/]", f"[bold]{result['mean_bpd']:.4f}[/]")
    Console().print(table)
    return EXIT_OK


@_guarded
def cmd_serve(args: argparse.Namespace) -> int:
    from deploy.serve import serve

    uri, cfg = _setup(args)
    host = args.host or cfg.deploy.host
    port = args.port or cfg.deploy.port
    model, info = load_served(uri)
    Console(stderr=True).print(
        f"serving {uri} (v{info['version']}) on http://{host}:{port}  "
        "(GET /health, POST /invocations)", highlight=False)
    serve(model, host, port, info)
    return EXIT_OK


def _request(model, x, params: dict[str, Any]):
    from deploy.pyfunc import BadRequest

    try:
        return model.run_request(x, params)
    except BadRequest as err:
        raise UsageError(str(err)) from None


def _stack(found) -> tuple[list[str], list]:
    names, images = [], []
    for name, image in found:
        names.append(name)
        images.append(image)
    if not images:
        raise UsageError("no images found in the given files")
    return names, images


def _check_shapes(names: list[str], images: list, shape: tuple[int, int, int]) -> None:
    for name, image in zip(names, images, strict=True):
        if tuple(image.shape) != tuple(shape):
            raise UsageError(f"{name}: image of shape {list(image.shape)} (C, H, W), but the "
                             f"model expects {list(shape)}")


def main(argv: list[str] | None = None) -> int:
    """`python -m deploy.cli models|deploy ...` (the same commands without `nfpipe`)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.cli")
    register_commands(parser.add_subparsers(metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_USAGE
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

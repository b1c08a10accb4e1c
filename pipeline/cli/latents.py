"""`nfpipe deploy encode|decode|reconstruct|interpolate|attributes|manipulate`: a registered
model's latents, and its attribute directions (stored with it by the evaluate stage).

The model is pulled as `deploy sample` pulls it (weights and config only, `deploy/load.py`);
images are PNG files, shard tars or `.npy` level arrays (`deploy/images.py`). The latents are
`flows.latents`: one array per level for the flows (`level0`, `level1`, …), the posterior
mean (`mean`) for VAE and f-VAE, in a `.safetensors` or `.npz` file.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from pipeline.cli.args import UsageError
from pipeline.cli.models import (
    check_scale,
    check_shapes,
    images_arg,
    load_scorer,
    save_levels,
    score_images,
    stack_images,
    store_and_config,
)

MAX_STEPS = 256  # frames between the two images of an interpolation strip
MAX_ALPHAS = 64  # frames of a manipulation row
NUMBER_LIST = re.compile(r"^-\d*\.?\d+(e-?\d+)?(,-?\d*\.?\d+(e-?\d+)?)*$")
HOW_TO_GET_DIRECTIONS = (
    "the evaluate stage computes them from the train split's labels (evaluate.directions, "
    "on by default) and promote registers them with the model: run `nfpipe run --stages "
    "evaluate,promote --force` to register a version that has them")
LATENT_SUFFIXES = (".safetensors", ".npz")


def register_latent_commands(deploy_sub: argparse._SubParsersAction,
                             common: Callable[..., None]) -> None:
    """Add encode, decode, reconstruct and interpolate to `nfpipe deploy`."""
    encode = deploy_sub.add_parser("encode", help="latents of images (one array per level; "
                                   "the posterior mean for VAE / f-VAE)")
    common(encode, model=True)
    images_arg(encode)
    encode.add_argument("--out", type=Path, required=True,
                        help="latents file to write: .safetensors or .npz")
    encode.add_argument("--batch-size", type=int, default=256, help="images per pass")
    encode.set_defaults(func=cmd_encode)

    decode = deploy_sub.add_parser("decode", help="images from a latents file")
    common(decode, model=True)
    decode.add_argument("latents", type=Path, help="a .safetensors or .npz file of `encode`")
    _picture_args(decode, "decoded.png")
    decode.set_defaults(func=cmd_decode)

    rec = deploy_sub.add_parser("reconstruct", help="decode(encode(x)): exact for the flows, "
                                "the posterior-mean reconstruction for VAE / f-VAE")
    common(rec, model=True)
    images_arg(rec)
    _picture_args(rec, "reconstruct.png", grid="inputs above, reconstructions below")
    rec.add_argument("--seed", type=int, default=0, help="seed of the bits/dim (default 0)")
    rec.add_argument("--json", action="store_true", help="print JSON instead of a line")
    rec.set_defaults(func=cmd_reconstruct)

    interp = deploy_sub.add_parser("interpolate", help="a strip from IMG_A to IMG_B along "
                                   "the straight line between their latents (Glow Fig. 5)")
    common(interp, model=True)
    interp.add_argument("image_a", metavar="IMG_A", help="one image (PNG, or .npy of one)")
    interp.add_argument("image_b", metavar="IMG_B", help="one image (PNG, or .npy of one)")
    interp.add_argument("--steps", type=int, default=8,
                        help="frames between the two images (default 8)")
    _picture_args(interp, "interpolation.png", grid="one row, the two images at the ends")
    interp.set_defaults(func=cmd_interpolate)

    attrs = deploy_sub.add_parser("attributes", help="the attribute directions stored with "
                                  "the model, with the train images counted with / without")
    common(attrs, model=True)
    attrs.add_argument("--json", action="store_true", help="print JSON instead of a table")
    attrs.set_defaults(func=cmd_attributes)

    manip = deploy_sub.add_parser("manipulate", help="IMAGE moved along an attribute's "
                                  "direction, one frame per alpha (Glow Fig. 6)")
    common(manip, model=True)
    manip.add_argument("image", metavar="IMAGE", help="one image (PNG, or .npy of one)")
    manip.add_argument("--attribute", required=True,
                       help="an attribute of `deploy attributes` (e.g. Smiling, or a class)")
    manip.add_argument("--alphas", default="-1,-0.5,0,0.5,1",
                       help="comma-separated multiples of the direction, one frame each "
                       "(default -1,-0.5,0,0.5,1; 0 is the image itself)")
    _picture_args(manip, "manipulate.png", grid="one row, one frame per alpha")
    # argparse takes "-1,-0.5,0" for an option (only a lone number may start with "-"):
    # a list of numbers is a value too, so `--alphas -1,-0.5,0,0.5,1` works as written
    manip._negative_number_matcher = NUMBER_LIST
    manip.set_defaults(func=cmd_manipulate)


def _picture_args(parser: argparse.ArgumentParser, default: str, grid: str = "a grid") -> None:
    parser.add_argument("--out", type=Path, default=Path(default),
                        help=f"PNG to write ({grid}); a name ending in .npy gets the levels "
                        "instead (uint8 [N, C, H, W])")
    parser.add_argument("--nrow", type=int, default=None, help="images per grid row")
    parser.add_argument("--scale", type=int, default=1,
                        help="enlarge every pixel to SCALE x SCALE (default 1)")


def _read(paths: list, scorer) -> tuple[list[str], list]:
    """(names, levels [C, H, W] each) of the files, checked against the model."""
    from deploy.images import read_images

    warnings = Console(stderr=True, highlight=False, soft_wrap=True)
    names, images = stack_images(read_images(paths, warn=warnings.print))
    check_shapes(names, images, scorer.image_shape)
    for name, image in zip(names, images, strict=True):
        if image.max() >= scorer.n_bins:
            raise UsageError(f"{name}: level {int(image.max())} is not below the model's "
                             f"n_bins={scorer.n_bins}")
    return names, images


def _write_picture(levels, n_bins: int, args: argparse.Namespace, nrow: int | None) -> Path:
    from flows.viz import save_level_grid

    if args.out.suffix == ".npy":
        return save_levels(levels, args.out)
    return save_level_grid(levels, n_bins, args.out, args.nrow or nrow, args.scale)


def _say(text: str) -> None:
    Console(highlight=False, soft_wrap=True).print(text)


def encode_all(model, images: list, batch_size: int) -> dict:
    """{name: latents [N, *shape]} of levels [C, H, W] each, `batch_size` images a pass."""
    import numpy as np

    from flows.latents import encode_levels

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    chunks = [encode_levels(model, np.stack(images[i:i + batch_size]))
              for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def cmd_encode(args: argparse.Namespace) -> int:
    from flows.latents import save_latents

    if args.out.suffix not in LATENT_SUFFIXES:
        raise UsageError(f"--out {args.out}: latents are written as .safetensors or .npz")
    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    names, images = _read(args.paths, scorer)
    latents = encode_all(scorer.model, images, args.batch_size)
    path = save_latents(latents, args.out)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in latents.items())
    _say(f"{len(names)} images under {uri} (v{info['version']}) -> {path} ({shapes})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from flows.latents import decode_levels, load_latents

    check_scale(args.scale)
    if not args.latents.is_file():
        raise FileNotFoundError(f"{args.latents}: no such file")
    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    levels = decode_levels(scorer.model, load_latents(args.latents))
    path = _write_picture(levels, scorer.n_bins, args, None)
    _say(f"{len(levels)} images decoded by {uri} (v{info['version']}) -> {path}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from flows.latents import decode_levels

    check_scale(args.scale)
    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    names, images = _read(args.paths, scorer)
    x = np.stack(images)
    recon = decode_levels(scorer.model, encode_all(scorer.model, images, 256))
    path = _write_picture(recon if args.out.suffix == ".npy" else np.concatenate([x, recon]),
                          scorer.n_bins, args, len(x))
    error = np.abs(recon.astype(np.int64) - x).mean(axis=(1, 2, 3))
    result = {"model_uri": uri, "version": info["version"], "exact": scorer.model.exact,
              "images": len(x), "identical": int((error == 0).sum()),
              "mean_abs_level_error": float(error.mean()),
              "bpd": float(score_images(scorer, images, 1, args.seed, 256).mean()),
              "reconstruction_bpd": float(score_images(scorer, list(recon), 1, args.seed,
                                                       256).mean()),
              "out": str(path)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _say(f"{result['identical']}/{len(x)} images reconstructed exactly by {uri} "
         f"(v{info['version']}); mean |level error| {result['mean_abs_level_error']:.4f}; "
         f"bits/dim {result['bpd']:.4f} (inputs), {result['reconstruction_bpd']:.4f} "
         f"(reconstructions) -> {path}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from flows.latents import interpolate

    check_scale(args.scale)
    if not 0 <= args.steps <= MAX_STEPS:
        raise UsageError(f"--steps must be between 0 and {MAX_STEPS}, got {args.steps}")
    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    ends = [_one_image(path, scorer) for path in (args.image_a, args.image_b)]
    frames = interpolate(scorer.model, *ends, steps=args.steps)
    path = _write_picture(frames, scorer.n_bins, args, len(frames))
    _say(f"{args.steps} frames between {args.image_a} and {args.image_b} under {uri} "
         f"(v{info['version']}) -> {path}")
    return 0


def _one_image(path: str, scorer):
    names, images = _read([path], scorer)
    if len(images) != 1:
        raise UsageError(f"{path}: holds {len(images)} images; give one image for each end")
    return images[0]


def cmd_attributes(args: argparse.Namespace) -> int:
    from rich.table import Table

    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    directions = _directions(scorer, uri, info)
    rows = [{"attribute": name, "with": directions.counts.get(name, (None, None))[0],
             "without": directions.counts.get(name, (None, None))[1]}
            for name in directions.names]
    if args.json:
        print(json.dumps({"model_uri": uri, "version": info["version"], "attributes": rows},
                         indent=2))
        return 0
    table = Table()
    for column in ("attribute", "with", "without"):
        table.add_column(column, justify="left" if column == "attribute" else "right")
    for row in rows:
        table.add_row(row["attribute"], str(row["with"]), str(row["without"]))
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"{len(rows)} attribute directions of {uri} (v{info['version']}), with the "
                  "train images counted with / without each:")
    console.print(table)
    return 0


def cmd_manipulate(args: argparse.Namespace) -> int:
    from flows.attributes import manipulate

    check_scale(args.scale)
    alphas = parse_alphas(args.alphas)
    uri, _ = store_and_config(args)
    scorer, info = load_scorer(uri)
    directions = _directions(scorer, uri, info)
    try:
        direction = directions.get(args.attribute)
    except KeyError as err:
        raise UsageError(f"--attribute: {err.args[0]} (`nfpipe deploy attributes`)") from None
    image = _one_image(args.image, scorer)
    frames = manipulate(scorer.model, image, direction, alphas)
    path = _write_picture(frames, scorer.n_bins, args, len(frames))
    _say(f"{args.image} along {args.attribute!r} at alpha {', '.join(map(str, alphas))} under "
         f"{uri} (v{info['version']}) -> {path}")
    return 0


def parse_alphas(text: str) -> list[float]:
    """`--alphas -1,-0.5,0,0.5,1` as floats: finite, 1 to MAX_ALPHAS of them."""
    import math

    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--alphas {text!r}: expected comma-separated numbers such as "
                         "-1,-0.5,0,0.5,1") from None
    if not 1 <= len(alphas) <= MAX_ALPHAS or not all(math.isfinite(a) for a in alphas):
        raise UsageError(f"--alphas {text!r}: expected 1 to {MAX_ALPHAS} finite numbers")
    return alphas


def _directions(scorer, uri: str, info: dict):
    if scorer.directions is None:
        raise UsageError(f"{uri} (v{info['version']}) has no attribute directions; "
                         f"{HOW_TO_GET_DIRECTIONS}")
    return scorer.directions

"""`nfpipe deploy serve`: a registered model over HTTP (FastAPI app run by uvicorn).

It speaks MLflow's scoring protocol: one request form works on this server and on
`mlflow models serve` alike, with the same answers (`deploy/pyfunc.py` has the forms):

* `GET /health` (also `/ping`): liveness, always 200 while the process answers: the model URI,
  version, image shape, n_bins, limits and the requests in progress.
* `GET /ready`: readiness, 200 while the server takes work, 503 while its queue is full (a
  load balancer sends traffic elsewhere) or its worker has stopped.
* `POST /invocations` with JSON `{"inputs": [[[[levels]]]], "params": {"k": 1, "seed": 0}}`
  -> `{"predictions": [bpd, ...]}`; with `{"inputs": [[[[0]]]], "params": {"mode": "sample",
  "n": 16, "temperature": 0.7, "seed": 0}}` -> `{"predictions": uint8 levels [n, C, H, W]}`;
  the modes encode, decode, interpolate and manipulate likewise (`deploy/pyfunc.py`; /health
  lists the modes, the latents' shapes and the model's attributes). As in MLflow, the inputs
  may come as `instances` instead (one of the two, not both); a sample request ignores them,
  and here (not in MLflow) it may leave them out.

Bounded work: a request may ask for images x k <= `max_work` (images encoded plus frames
decoded for the latent modes; 400 above it); requests share the model fairly in units of work
(`deploy/scheduler.py`), so small ones are not starved by a big one; one still unfinished after
`request_timeout_s` gets 503, as does one that finds `max_queue` requests in progress. Bad
requests get a 4xx with `{"error_code": ..., "message": ...}`: 400 for wrong shape, dtype,
levels >= n_bins, bad latents, unknown params or attribute, too many images, samples, frames or
work, or JSON nested too deeply; 413 for a body over the limit (counted while it is read,
chunked or not); 415 for a body that is not JSON. The server never crashes on a request.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the annotation by name

from deploy.pyfunc import MODES, BadRequest, FlowScorer
from deploy.scheduler import DeadlineExceeded, FairScheduler, Overloaded

PARAMS = ("mode", "k", "seed", "n", "temperature", "steps", "attribute", "alphas")
INPUT_KEYS = ("inputs", "instances")  # MLflow's tensor input fields
# what each mode that reads its inputs needs there (sample ignores them)
INPUTS_NEEDED = {"score": "uint8 levels [B, C, H, W]", "encode": "uint8 levels [B, C, H, W]",
                 "decode": "latents [B, D] as an encode request returns them",
                 "interpolate": "uint8 levels of two images [2, C, H, W]",
                 "manipulate": "uint8 levels of one image [1, C, H, W]"}
MAX_CHARS_PER_VALUE = 26  # JSON of one float32 latent: up to 23 characters and ", "


class BodyTooLarge(ValueError):
    """The request body passed the limit while it was being read."""


class BindError(ValueError):
    """The server cannot listen on the address it was given."""


@dataclass(frozen=True)
class ServeOptions:
    """How the server shares its model: the per-request deadline and the most in progress."""

    request_timeout_s: float = 60.0
    max_queue: int = 512


def create_app(model: FlowScorer, info: dict[str, Any] | None = None,
               options: ServeOptions = ServeOptions()):
    """The FastAPI app serving `model` (a loaded `FlowScorer`); `info` goes into /health."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    scheduler = FairScheduler(options.max_queue, options.request_timeout_s)
    shapes = model.latent_shapes
    max_body = body_limit(model, sum(math.prod(shape) for shape in shapes.values()))

    @asynccontextmanager
    async def lifespan(_app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="nfpipe model server", docs_url=None, redoc_url=None, lifespan=lifespan)
    health = {"status": "ok", **(info or {}), "image_shape": list(model.image_shape),
              "n_bins": model.n_bins, "max_batch": model.limits.max_batch,
              "max_samples": model.limits.max_samples, "max_work": model.limits.max_work,
              "max_body_bytes": max_body, "modes": list(MODES),
              "latent_shapes": {name: list(shape) for name, shape in shapes.items()},
              "attributes": model.directions.names if model.directions is not None else []}

    def error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error_code": code, "message": message}, status_code=status,
                            headers=headers or None)

    @app.get("/health")
    @app.get("/ping")
    async def get_health() -> dict[str, Any]:
        return {**health, "in_progress": scheduler.pending}

    @app.get("/ready")
    async def get_ready():
        if scheduler.ready:
            return {"ready": True, "in_progress": scheduler.pending}
        return error(503, "NOT_READY", f"{scheduler.pending} requests in progress (at most "
                     f"{scheduler.max_pending}) or the worker stopped", **{"Retry-After": "1"})

    @app.post("/invocations")
    async def invocations(request: Request):
        if "json" not in request.headers.get("content-type", ""):
            return error(415, "UNSUPPORTED_MEDIA_TYPE", "Send JSON (Content-Type: "
                         "application/json): {\"inputs\": [...], \"params\": {...}}.")
        try:
            body = await read_body(request, max_body)
            steps = await run_in_threadpool(plan_request, model, body)
            out = await scheduler.run(steps)
        except BodyTooLarge as err:
            return error(413, "PAYLOAD_TOO_LARGE", str(err), Connection="close")
        except BadRequest as err:
            return error(400, "BAD_REQUEST", str(err))
        except (Overloaded, DeadlineExceeded) as err:
            return error(503, "SERVICE_UNAVAILABLE", str(err), **{"Retry-After": "1"})
        return JSONResponse({"predictions": out.tolist()})

    app.state.scheduler = scheduler
    return app


def body_limit(model: FlowScorer, latent_size: int) -> int:
    """Bytes a maximal valid request can take, plus slack: max_batch images of levels (up to 4
    characters each) or of latents (`latent_size` floats of up to 26 characters each)."""
    c, h, w = model.image_shape
    per_image = max(c * h * w * 4, latent_size * MAX_CHARS_PER_VALUE)
    return model.limits.max_batch * per_image + (1 << 20)


async def read_body(request: Any, limit: int) -> bytes:
    """The body, refused as soon as more than `limit` bytes have arrived (chunked or not)."""
    declared = request.headers.get("content-length")
    too_large = (f"Request body over {limit} bytes; send at most the model's max_batch "
                 "images per request.")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(too_large)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def plan_request(model: FlowScorer, body: bytes):
    """Parse and validate a body (raising BadRequest); the generator of its units."""
    x, params = parse_request(body)
    try:
        return model.plan(x, params)
    except RecursionError:
        raise BadRequest("'inputs' is nested too deeply; expected [B, C, H, W].") from None


def parse_request(body: bytes) -> tuple[np.ndarray | None, dict[str, Any]]:
    """JSON body -> (images or None, params); raises BadRequest with a clear message."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"Body is not valid JSON: {err}.") from None
    except ValueError:  # Python's limit on int-string conversion (sys.int_info)
        raise BadRequest(f"Body holds an integer literal over {sys.get_int_max_str_digits()} "
                         "digits; levels, n, k and seed are small integers.") from None
    except RecursionError:
        raise BadRequest("Body is JSON nested too deeply; expected {\"inputs\": [B, C, H, W] "
                         "levels, \"params\": {...}}.") from None
    if not isinstance(payload, dict):
        raise BadRequest('Expected a JSON object {"inputs": [...], "params": {...}}.')
    unknown = set(payload) - {*INPUT_KEYS, "params"}
    if unknown:
        raise BadRequest(f"Unknown keys {sorted(unknown)}; expected 'inputs' and 'params'.")
    if set(INPUT_KEYS) <= set(payload):  # MLflow's server refuses this too
        raise BadRequest("Send the images as 'inputs' or as 'instances', not both.")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be an object.")
    if set(params) - set(PARAMS):
        raise BadRequest(f"Unknown params {sorted(set(params) - set(PARAMS))}; "
                         f"expected some of {list(PARAMS)}.")
    inputs = payload.get("inputs", payload.get("instances"))
    if inputs is None:
        mode = params.get("mode") or "score"
        if mode == "score":
            raise BadRequest(f"Scoring needs 'inputs': {INPUTS_NEEDED['score']}.")
        if isinstance(mode, str) and mode in INPUTS_NEEDED:
            raise BadRequest(f"'{mode}' needs 'inputs': {INPUTS_NEEDED[mode]}.")
        return None, params  # a sample request, or an unknown mode `plan` refuses
    try:
        return np.asarray(inputs), params
    except (ValueError, OverflowError, TypeError, RecursionError) as err:
        raise BadRequest(f"'inputs' is not a rectangular array of numbers: "
                         f"{type(err).__name__}: {str(err)[:200]}.") from None


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or BindError naming the address and the cause."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise BindError(f"cannot listen on {host}:{port}: {host!r} is not an address of this "
                        f"machine ({err}); use --host 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(2048)
    except OSError as err:
        listener.close()
        raise BindError(f"cannot listen on {host}:{port}: {err.strerror or err}; pick another "
                        "--host or --port") from None
    return listener


def reachable_from_network(host: str) -> bool:
    """True unless `host` is a loopback address (or `localhost`)."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return True


def serve(model: FlowScorer, listener: socket.socket, info: dict[str, Any] | None = None,
          options: ServeOptions = ServeOptions()) -> None:
    """Run the server on an already bound `listener` until interrupted."""
    import uvicorn

    config = uvicorn.Config(create_app(model, info, options), log_level="warning",
                            access_log=False)
    uvicorn.Server(config).run(sockets=[listener])

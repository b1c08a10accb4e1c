"""`nfpipe deploy serve`: a registered model over HTTP (FastAPI app run by uvicorn).

It speaks MLflow's scoring protocol, so the same client code works against this server and
`mlflow models serve`:

* `GET /health` (also `/ping`): 200 with the model URI, version, image shape, n_bins, limits.
* `POST /invocations` with JSON `{"inputs": [[[[levels]]]], "params": {"k": 1, "seed": 0}}`
  -> `{"predictions": [bpd, ...]}`; with `"params": {"mode": "sample", "n": 16,
  "temperature": 0.7, "seed": 0}` (no `inputs` needed) -> `{"predictions": uint8 levels
  [n, C, H, W]}`.

Bad requests get a 4xx with `{"error_code": ..., "message": ...}`: 400 for wrong shape, dtype,
levels >= n_bins, unknown params or too many images/samples; 413 for an oversized body; 415 for
a body that is not JSON. The server never crashes on a request and keeps serving.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import Request  # at module level: FastAPI resolves the annotation by name

from deploy.pyfunc import BadRequest, FlowPyfunc

PARAMS = ("mode", "k", "seed", "n", "temperature")


def create_app(model: FlowPyfunc, info: dict[str, Any] | None = None):
    """The FastAPI app serving `model` (a loaded `FlowPyfunc`); `info` goes into /health."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    health = {
        "status": "ok", **(info or {}),
        "image_shape": list(model.image_shape), "n_bins": model.n_bins,
        "max_batch": model.limits.max_batch, "max_samples": model.limits.max_samples,
    }
    max_body = body_limit(model)
    app = FastAPI(title="nfpipe model server", docs_url=None, redoc_url=None)

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error_code": code, "message": message}, status_code=status)

    @app.get("/health")
    @app.get("/ping")
    async def get_health() -> dict[str, Any]:
        return health

    @app.post("/invocations")
    async def invocations(request: Request):
        if "json" not in request.headers.get("content-type", ""):
            return error(415, "UNSUPPORTED_MEDIA_TYPE", "Send JSON (Content-Type: "
                         "application/json): {\"inputs\": [...], \"params\": {...}}.")
        if int(request.headers.get("content-length") or 0) > max_body:
            return error(413, "PAYLOAD_TOO_LARGE", f"Request body over {max_body} bytes; send "
                         f"at most {model.limits.max_batch} images per request.")
        body = await request.body()
        if len(body) > max_body:
            return error(413, "PAYLOAD_TOO_LARGE", f"Request body over {max_body} bytes.")
        try:
            x, params = parse_request(body)
            out = await run_in_threadpool(model.run_request, x, params)
        except BadRequest as err:
            return error(400, "BAD_REQUEST", str(err))
        return JSONResponse({"predictions": out.tolist()})

    return app


def body_limit(model: FlowPyfunc) -> int:
    """Bytes a maximal valid request can take: up to 4 characters per level, plus slack."""
    c, h, w = model.image_shape
    return model.limits.max_batch * c * h * w * 4 + (1 << 20)


def parse_request(body: bytes) -> tuple[np.ndarray | None, dict[str, Any]]:
    """JSON body -> (images or None, params); raises BadRequest with a clear message."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"Body is not valid JSON: {err}.") from None
    if not isinstance(payload, dict):
        raise BadRequest('Expected a JSON object {"inputs": [...], "params": {...}}.')
    unknown = set(payload) - {"inputs", "instances", "params"}
    if unknown:
        raise BadRequest(f"Unknown keys {sorted(unknown)}; expected 'inputs' and 'params'.")
    params = payload.get("params") or {}
    if not isinstance(params, dict):
        raise BadRequest("'params' must be an object.")
    if set(params) - set(PARAMS):
        raise BadRequest(f"Unknown params {sorted(set(params) - set(PARAMS))}; "
                         f"expected some of {list(PARAMS)}.")
    inputs = payload.get("inputs", payload.get("instances"))
    if inputs is None:
        if params.get("mode", "score") == "score":
            raise BadRequest("Scoring needs 'inputs': uint8 levels [B, C, H, W].")
        return None, params
    try:
        return np.asarray(inputs), params
    except (ValueError, OverflowError, TypeError) as err:
        raise BadRequest(f"'inputs' is not a rectangular array of integers: {err}.") from None


def serve(model: FlowPyfunc, host: str, port: int, info: dict[str, Any] | None = None) -> None:
    """Run the server in this process until interrupted."""
    import uvicorn

    uvicorn.run(create_app(model, info), host=host, port=port, log_level="warning",
                access_log=False)

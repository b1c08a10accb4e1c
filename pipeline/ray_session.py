"""Start or join Ray for a pipeline run (no global state of our own: Ray keeps its own)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from pipeline.config import RayConfig
from pipeline.ray_logging import quiet_sigterm_exit

log = logging.getLogger(__name__)

# Where Ray's state API (used inside Ray Train's controller) finds the dashboard; Ray reads it
# before RAY_ADDRESS and before any `ray start` address file or running GCS on this machine.
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
AUTH_MODE_ENV = "RAY_AUTH_MODE"


def ensure_ray(cfg: RayConfig) -> None:
    """Join the cluster at `cfg.address`, or start a local Ray; a no-op if already connected."""
    import ray

    if ray.is_initialized():
        return
    if not sys.stdout.isatty():  # a log: worker lines without Ray's colour codes (read per line)
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    quiet = ray.LoggingConfig(log_level=cfg.log_level)  # Ray's own INFO chatter off by default
    use_token_auth(new_cluster=not cfg.address)
    if cfg.address:
        log.info("connecting to Ray at %s", cfg.address)
        ray.init(address=cfg.address, log_to_driver=True, logging_config=quiet)
        return
    log.info("starting a local Ray (num_cpus=%s)", cfg.num_cpus or "all")
    quiet_sigterm_exit()  # this driver is stopped by Ray's SIGTERM handler too
    # One machine has no spot instances to watch; the watcher only adds a startup error line.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    dashboard = embedded_dashboard(cfg.dashboard)
    # address="local": always a new local Ray, never a `ray start` cluster found on this machine
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.dashboard,
        log_to_driver=True,
        logging_config=quiet,
        runtime_env={"worker_process_setup_hook": "pipeline.ray_logging.quiet_ray_internals"},
        **dashboard,
    )


def use_token_auth(new_cluster: bool) -> None:
    """Choose token auth where Ray would, so that Ray does not warn that it chose.

    Ray (>= 2.5x) enables token auth on a new local cluster, and on joining one when this
    machine has a token (`~/.ray/auth_token`, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN), and
    each time logs "Token authentication is enabled for this Ray cluster" unless
    RAY_AUTH_MODE is set; its clients (the job client) send the token only when it is. An
    explicit RAY_AUTH_MODE wins.
    """
    if AUTH_MODE_ENV in os.environ or not (new_cluster or _has_local_token()):
        return
    os.environ[AUTH_MODE_ENV] = "token"
    from ray._raylet import Config

    Config.initialize("")  # Ray caches the mode at import: refresh it, as ray.init does


def _has_local_token() -> bool:
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return "RAY_AUTH_TOKEN" in os.environ or token_file.exists()


def disconnect_ray() -> None:
    """Disconnect from Ray (and stop the embedded one) if this process started or joined it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def embedded_dashboard(enabled: bool) -> dict[str, object]:
    """The embedded Ray's dashboard on a free loopback port, announced to every Ray process.

    Ray Train's controller asks Ray's state API about its actors without an address; the
    state API then looks for "the" cluster on this machine: the address file a `ray start`
    head left behind (stale once that head was killed: "Timed out while waiting for GCS",
    12-15 s lost per fit) or any GCS process running here (other users' clusters). Setting
    RAY_API_SERVER_ADDRESS before `ray.init` makes the raylet, and so every worker and the
    controller, ask this Ray's own dashboard instead.
    """
    if not enabled:
        return {}
    port = _free_port()
    os.environ[API_SERVER_ENV] = f"http://127.0.0.1:{port}"
    return {"dashboard_host": "127.0.0.1", "dashboard_port": port}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]

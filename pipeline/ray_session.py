"""Start or join Ray for a pipeline run (no global state of our own: Ray keeps its own)."""

from __future__ import annotations

import logging
import os

from pipeline.config import RayConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: RayConfig) -> None:
    """Join the cluster at `cfg.address`, or start a local Ray; a no-op if already connected."""
    import ray

    if ray.is_initialized():
        return
    quiet = ray.LoggingConfig(log_level=cfg.log_level)  # Ray's own INFO chatter off by default
    if cfg.address:
        log.info("connecting to Ray at %s", cfg.address)
        ray.init(address=cfg.address, log_to_driver=True, logging_config=quiet)
        return
    log.info("starting a local Ray (num_cpus=%s)", cfg.num_cpus or "all")
    # One machine has no spot instances to watch; the watcher only adds a startup error line.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # address="local": always a new local Ray, never a `ray start` cluster found on this machine
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus,
        include_dashboard=cfg.dashboard,
        log_to_driver=True,
        logging_config=quiet,
    )

"""The embedded Ray that a pipeline run starts: its worker processes quiet Ray's harmless
internal tracebacks (a Ray Train resource request timing out on a busy machine)."""

from __future__ import annotations

import logging
import sys

import pytest

from pipeline.config import RayConfig
from pipeline.ray_logging import QUIET_LOGGERS
from pipeline.ray_session import disconnect_ray, ensure_ray

pytestmark = pytest.mark.slow  # starts its own local Ray


def _level() -> int:
    return logging.getLogger(QUIET_LOGGERS[0]).getEffectiveLevel()


def test_every_worker_process_of_the_embedded_ray_quiets_rays_internal_warnings():
    import ray

    if ray.is_initialized():  # another test's Ray in this process: this one must start its own
        pytest.skip("a Ray is already connected in this process")
    from ray import cloudpickle

    this_module = sys.modules[__name__]  # workers cannot import test modules: ship it by value
    cloudpickle.register_pickle_by_value(this_module)
    ensure_ray(RayConfig(dashboard=False, num_cpus=2))
    try:
        task = ray.remote(_level)
        actor = ray.remote(type("Probe", (), {"level": lambda self: _level()}))
        assert ray.get(task.remote()) == logging.ERROR
        assert ray.get(actor.remote().level.remote()) == logging.ERROR
    finally:
        disconnect_ray()
        cloudpickle.unregister_pickle_by_value(this_module)

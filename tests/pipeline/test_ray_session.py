"""The embedded Ray that a pipeline run starts: its worker processes quiet Ray's harmless
internal tracebacks (a Ray Train resource request timing out on a busy machine), and starting
it prints no token-auth warning (token auth stays on, as Ray's default)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO, subprocess_env

pytestmark = pytest.mark.slow  # starts its own local Ray

# In a fresh process: this test process may already hold another test's Ray.
PROBE = """
import logging, os, ray
from pipeline.config import RayConfig
from pipeline.ray_logging import QUIET_LOGGERS
from pipeline.ray_session import disconnect_ray, ensure_ray

def level():
    return logging.getLogger(QUIET_LOGGERS[0]).getEffectiveLevel()

class Probe:
    def level(self):
        return level()

ensure_ray(RayConfig(dashboard=False, num_cpus=2))
try:
    print(os.environ["RAY_AUTH_MODE"])
    print(ray.get(ray.remote(level).remote()), ray.get(ray.remote(Probe).remote().level.remote()))
finally:
    disconnect_ray()
"""


def test_every_worker_process_of_the_embedded_ray_quiets_rays_internal_warnings():
    env = subprocess_env()
    env.pop("RAY_AUTH_MODE", None)  # unset, as in a user's shell: Ray would choose and warn
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    auth_mode, task_level, actor_level = proc.stdout.split()[-3:]
    assert (task_level, actor_level) == ("40", "40")  # logging.ERROR in a task and an actor
    assert auth_mode == "token"  # Ray's default for a new local cluster, chosen explicitly
    assert "Token authentication" not in proc.stdout + proc.stderr, proc.stderr[-3000:]

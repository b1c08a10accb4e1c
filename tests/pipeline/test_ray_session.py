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


UNRAISABLE = """
import sys
from pipeline.ray_logging import quiet_sigterm_exit
class Dies:
    def __init__(self, error): self.error = error
    def __del__(self): raise self.error
if sys.argv[1] == "quiet":
    quiet_sigterm_exit()
Dies(SystemExit(1))
Dies(ValueError("a real error"))
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_a_sigterm_exit_in_a_gc_callback_prints_no_traceback(mode):
    """Ray's SIGTERM handler raises SystemExit; landing in a finaliser, Python would print it
    as "Exception ignored … Traceback". Quieted, it prints nothing; other errors still show."""
    proc = subprocess.run([sys.executable, "-c", UNRAISABLE, mode], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert "ValueError: a real error" in proc.stderr
    assert ("SystemExit" in proc.stderr) is (mode == "default"), proc.stderr

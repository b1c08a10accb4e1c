"""A persistent, per-node cache of compiled graphs, so only the first compile on a node is cold.

torch.compile's inductor keeps compiled kernels (its FX graph cache) and AOTAutograd's
forward/backward graphs (its autograd cache) in `TORCHINDUCTOR_CACHE_DIR`, by default under
`/tmp`, which many clusters clear or keep per container. Pointing it at a folder in the home
directory makes a second run of the same recipe on the same node, and every Ray worker and
Tune trial there (separate processes, one folder), load the compiled graphs instead of
compiling them again; Dynamo still traces the model (seconds). Inductor writes its entries
atomically, so concurrent workers can share the folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch._functorch.config
import torch._inductor.config

#: The environment variable that names the folder (else `DEFAULT_FOLDER`).
FOLDER_ENV = "NFPIPE_COMPILE_CACHE"
DEFAULT_FOLDER = Path("~/.cache/nfpipe/inductor")
INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"


def use_compile_cache(folder: str | Path | None = None) -> Path | None:
    """Keep inductor's caches in `folder` (else $NFPIPE_COMPILE_CACHE, else
    ~/.cache/nfpipe/inductor), with its FX graph and autograd caches on; returns the folder,
    or None (with a warning) when it cannot be created: inductor then keeps its default.

    Call it before the first compile of the process. A `TORCHINDUCTOR_CACHE_DIR` set by the
    user wins over the default (not over an explicit `folder`).
    """
    if folder is None:
        folder = os.environ.get(FOLDER_ENV) or os.environ.get(INDUCTOR_ENV) or DEFAULT_FOLDER
    path = Path(folder).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        warnings.warn(f"compile cache folder {path} cannot be created ({err}); set "
                      f"{FOLDER_ENV} to a writable folder to reuse compiled graphs across runs",
                      RuntimeWarning, stacklevel=2)
        return None
    os.environ[INDUCTOR_ENV] = str(path)
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return path

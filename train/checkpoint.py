"""The training checkpoint: one folder per evaluated epoch, written by rank 0.

```
<checkpoint>/
  model/            flows model bundle of the evaluated weights (EMA when enabled)
  train_state.pt    raw weights, optimizer, scheduler, EMA, counters, epoch history
```

The data position is the epoch boundary (loaders are shuffled by (seed, epoch)) and every
rank's random stream is reseeded from (seed, rank, epoch) at the start of an epoch, so a run
resumed from epoch e draws exactly what an uninterrupted run draws from epoch e on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MODEL_SUBDIR = "model"
STATE_FILE = "train_state.pt"


def save_state(directory: Path, state: dict[str, Any]) -> None:
    """Write the resumable training state (tensors and plain Python values only)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(directory / STATE_FILE)


def load_state(directory: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read what `save_state` wrote (weights_only: no pickled code is executed)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    return torch.load(path, map_location=map_location, weights_only=True)


def model_bundle(checkpoint_dir: Path) -> Path:
    """The flows model bundle inside a checkpoint folder."""
    return Path(checkpoint_dir) / MODEL_SUBDIR

"""MLflow names: metrics grouped by what their step axis counts, tags in one namespace.

The MLflow UI sorts and groups charts by the prefix before '/', and plots every metric against
an axis it calls "Step". So the names say the axis: `bpd/...` (the curves people look at,
first) and `epoch/...` are logged at step = epoch, `step/...` at step = optimiser step, and
MLflow's own `system/...` at step = sample. The training loop, Ray Train and Ray Tune keep
their plain keys (`val_bpd`, the checkpoint score and the sweep metric); only what reaches
MLflow is renamed, here.
"""

from __future__ import annotations

TAG_PREFIX = "nfpipe."

# per-epoch keys of the training loop (and of Tune results) -> MLflow metric names
EPOCH_METRICS = {
    "val_bpd": "bpd/val",
    "test_bpd": "bpd/test",
    "train_bpd": "bpd/train",
    "test_bpd_iwae": "bpd/test_iwae",
    "grad_norm": "epoch/grad_norm",
    "lr": "epoch/lr",
    "skipped_steps": "epoch/skipped_steps",
    "images_per_s": "epoch/images_per_s",
    "epoch_s": "epoch/train_seconds",
    "data_s": "epoch/data_wait_seconds",
    "cpu_s": "epoch/cpu_seconds",
}


def epoch_metric(key: str) -> str:
    """The MLflow name of a per-epoch metric (`val_bpd` -> `bpd/val`); names that already
    carry an axis prefix are kept."""
    if "/" in key:
        return key
    return EPOCH_METRICS.get(key, f"epoch/{key}")


def epoch_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A per-epoch metrics dict with MLflow names."""
    return {epoch_metric(key): value for key, value in metrics.items()}


def nfpipe_tags(values: dict[str, str]) -> dict[str, str]:
    """`{'stage': 'train'}` -> `{'nfpipe.stage': 'train'}` (MLflow's own `mlflow.*` kept)."""
    return {key if key.startswith(("mlflow.", TAG_PREFIX)) else TAG_PREFIX + key: value
            for key, value in values.items()}

"""Checks that make a multi-node run fail fast, before any training, when storage is not shared."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


class StorageNotShared(RuntimeError):
    """A path the workers need is not visible on every node of the Ray cluster."""


def _missing_here(paths: list[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


def check_visible_on_all_nodes(paths: Iterable[str | Path]) -> None:
    """Raise StorageNotShared naming the node and path when a node cannot see a path.

    One zero-CPU task per alive node (hard node affinity) looks the paths up there; on a
    single-node Ray this costs nothing and checks nothing.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    wanted = [str(Path(p).resolve()) for p in paths]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or not wanted:
        return
    probe = ray.remote(num_cpus=0)(_missing_here)
    refs = {
        node["NodeManagerAddress"] + " " + node["NodeID"][:8]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(wanted)
        for node in nodes
    }
    problems = [(name, missing) for name, ref in refs.items() if (missing := ray.get(ref))]
    if problems:
        name, missing = problems[0]
        raise StorageNotShared(
            f"node {name} cannot see {missing[0]} ({len(problems)} of {len(nodes)} nodes "
            "affected). On a multi-node cluster put the shards (data_prep.output_root), Ray's "
            "storage (train.storage_path) and MLflow (an http:// tracking_uri) on storage every "
            "node can read: NFS, or S3/GCS URLs."
        )
    log.info("all %d nodes see %d shared paths", len(nodes), len(wanted))

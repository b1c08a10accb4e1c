"""The orchestrator's node check: a multi-node run fails fast, before any stage's work, when a
node cannot reach the data or the storage. Every node must read the shard manifest (and a
SQLite store) and write to Ray Train's storage path, whether they are shared folders or
object-store URLs."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable

from data_prep import storage

log = logging.getLogger(__name__)


class StorageNotShared(RuntimeError):
    """A location the workers need cannot be read or written from some node of the cluster."""


def probe_storage(reads: list[str], writes: list[str]) -> list[str]:
    """What this node cannot do, one phrase per location ('cannot see …', 'cannot write …').

    Local paths must exist here (on several nodes that means a shared file system); URLs are
    read (a file) or listed (a folder) and written with a small probe object, deleted again.
    """
    problems = []
    for location in reads:
        try:
            if storage.is_remote(location):
                _read_or_list(location)
            elif not os.path.exists(location):
                problems.append(f"cannot see {location}")
        except Exception as exc:  # noqa: BLE001 - any client error means this node cannot read
            problems.append(f"cannot read {location} ({type(exc).__name__}: {exc})")
    for location in writes:
        if not storage.is_remote(location):
            if not os.path.exists(location):
                problems.append(f"cannot see {location}")
            continue
        probe = storage.join(location, f".nfpipe-probe-{socket.gethostname()}-{uuid.uuid4().hex}")
        try:
            storage.write_bytes(probe, b"nfpipe storage check\n")
            storage.remove(probe)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"cannot write to {location} ({type(exc).__name__}: {exc})")
    return problems


def _read_or_list(location: str) -> None:
    if storage.is_file(location):
        storage.read_bytes(location)
    else:
        storage.list_names(location)


def check_storage_on_all_nodes(reads: Iterable[str], writes: Iterable[str] = ()) -> None:
    """Raise StorageNotShared naming the node and the location when a node cannot read or
    write what the workers need.

    One zero-CPU task per alive node (hard node affinity) probes there; on a single-node Ray
    this costs nothing and checks nothing (the driver already reached everything).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reads, writes = [storage.absolute(p) for p in reads], [storage.absolute(p) for p in writes]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1 or not (reads or writes):
        return
    probe = ray.remote(num_cpus=0)(probe_storage)
    refs = {
        node["NodeManagerAddress"] + " " + node["NodeID"][:8]: probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(reads, writes)
        for node in nodes
    }
    problems = [(name, found) for name, ref in refs.items() if (found := ray.get(ref))]
    if problems:
        name, found = problems[0]
        raise StorageNotShared(
            f"node {name} {found[0]} ({len(problems)} of {len(nodes)} nodes affected). On a "
            "multi-node cluster put the shards (data_prep.output_root) and Ray's storage "
            "(train.storage_path) where every node reaches them: object storage (s3:// or "
            "gs://bucket/prefix, with credentials on every node) or a shared file system, and "
            "MLflow on a server (an http:// mlflow.tracking_uri)."
        )
    log.info("all %d nodes reach %d locations", len(nodes), len(reads) + len(writes))


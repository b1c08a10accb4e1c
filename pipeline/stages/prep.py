"""data_prep stage: shard the configured dataset (see data_prep/), here or as Ray tasks.

With `data_prep.ray_workers` set, the groups of shards are written by Ray tasks (at most that
many at once, on the local Ray or across the cluster); `data_prep` itself stays free of Ray and
only receives the map function.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from data_prep import Manifest, prepare, storage
from data_prep.errors import DataPrepError
from data_prep.prepare import GroupTask
from data_prep.shards import ShardGroup, ShardInfo
from data_prep.verify import find_damage
from pipeline.node_check import check_storage_on_all_nodes
from pipeline.progress import progress_bar
from pipeline.ray_session import ensure_ray
from pipeline.stages.base import StageContext, StageOutputs

GROUPS_PER_WORKER = 4  # several groups per task slot keep every worker busy to the end


def run(ctx: StageContext) -> StageOutputs:
    cfg = ctx.config.data_prep
    with progress_bar(ctx.console, "{task.description}") as bar:
        tasks: dict[str, int] = {}

        def progress(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = bar.add_task(f"{cfg.dataset} {split}", total=total)
            bar.update(tasks[split], completed=done, total=total)

        manifest_path = prepare(cfg, progress=progress, force=ctx.force, **_distribution(ctx))
    manifest = Manifest.load(manifest_path)
    counts = ", ".join(f"{name} {split.count}" for name, split in manifest.splits.items())
    ctx.console.print(f"    {manifest.dataset} {tuple(manifest.image_shape)}: {counts} → "
                      f"{manifest.location}")
    return {
        "manifest": manifest.location,
        "manifest_fingerprint": manifest.fingerprint,
    }


def recheck(outputs: Mapping[str, Any]) -> str | None:
    """Why a recorded shard set is no longer valid (its manifest changed since this stage
    wrote it, or its first damaged shard), or None."""
    try:
        manifest = Manifest.load(outputs["manifest"])
    except (KeyError, DataPrepError):
        return "manifest missing or unreadable"
    if manifest.fingerprint != outputs.get("manifest_fingerprint"):
        return "manifest.json changed since data_prep wrote it"
    damaged = find_damage(manifest)
    if not damaged:
        return None
    return f"{damaged[0].location}: {damaged[0].problem}; {len(damaged)} damaged shard(s)"


def _distribution(ctx: StageContext) -> dict[str, Any]:
    """prepare()'s map_fn and group size: Ray tasks when `data_prep.ray_workers` is set."""
    cfg = ctx.config.data_prep
    workers = cfg.ray_workers
    if workers is None:
        return {}
    ensure_ray(ctx.config.ray)
    # tasks on other nodes must reach the source and the output: fail now, naming the node
    storage.make_folder(cfg.output_root)
    check_storage_on_all_nodes(reads=[cfg.source] if cfg.source else [],
                               writes=[cfg.output_root])
    return {"map_fn": lambda task, groups: ray_map(task, groups, workers),
            "groups_per_split": workers * GROUPS_PER_WORKER}


def ray_map(task: GroupTask, groups: list[ShardGroup], workers: int) -> Iterator[list[ShardInfo]]:
    """Each group as a 1-CPU Ray task, at most `workers` at once; results in group order."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(_call)
    task_ref = ray.put(task)
    pending, results, next_to_yield = {}, {}, 0
    queue = list(enumerate(groups))
    while queue or pending:
        while queue and len(pending) < workers:
            index, group = queue.pop(0)
            pending[remote.remote(task_ref, group)] = index
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            results[pending.pop(ref)] = ray.get(ref)
        while next_to_yield in results:
            yield results.pop(next_to_yield)
            next_to_yield += 1


def _call(task: GroupTask, group: ShardGroup) -> list[ShardInfo]:
    return task(group)

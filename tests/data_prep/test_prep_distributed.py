"""data_prep's shard groups as Ray tasks (the prep stage's map function): byte-identical to
the single-process run, locally and on S3. (Here, not in tests/pipeline: it uses the raw
dataset builders of tests/data_prep.)"""

from __future__ import annotations

import pytest
from raw_builders import write_celeba

from data_prep import DataPrepConfig, Manifest, prepare
from pipeline.stages.prep import ray_map

pytestmark = pytest.mark.usefixtures("ray_local")


def _on_ray(task, groups):
    return ray_map(task, groups, workers=2)


def test_ray_tasks_write_the_same_bytes_as_one_process(tmp_path):
    source = write_celeba(tmp_path / "celeba", [0] * 40 + [1] * 6 + [2] * 12)
    base = {"dataset": "celeba", "source": str(source), "shard_max_count": 8}
    alone = Manifest.load(prepare(DataPrepConfig(**base, output_root=tmp_path / "a")))
    progress = []
    spread = Manifest.load(prepare(DataPrepConfig(**base, output_root=tmp_path / "b"),
                                   progress=lambda *a: progress.append(a), map_fn=_on_ray,
                                   groups_per_split=3))
    assert spread.to_json() == alone.to_json()  # same shard names, counts and sha256
    assert spread.fingerprint == alone.fingerprint
    for name in (s.name for s in alone.splits["train"].shards):
        assert (spread.root / name).read_bytes() == (alone.root / name).read_bytes()
    assert progress[-1] == ("test", 12, 12)


def test_ray_tasks_write_to_s3(s3_bucket, tmp_path):
    spread = prepare(DataPrepConfig(output_root=f"{s3_bucket}/shards", shard_max_count=100),
                     map_fn=_on_ray, groups_per_split=4)
    alone = prepare(DataPrepConfig(output_root=tmp_path, shard_max_count=100))
    assert Manifest.load(spread).fingerprint == Manifest.load(alone).fingerprint


def test_prep_stage_with_ray_workers(tmp_path, digits_manifest):
    from rich.console import Console

    from pipeline.config import PipelineConfig
    from pipeline.stages import prep
    from pipeline.stages.base import StageContext

    cfg = PipelineConfig.model_validate({
        "workdir": str(tmp_path / "work"),
        "data_prep": {"output_root": str(tmp_path / "shards"), "ray_workers": 2}})
    ctx = StageContext(config=cfg, stage_dir=tmp_path / "work" / "data_prep", inputs={},
                       console=Console(quiet=True))
    out = prep.run(ctx)
    assert out["manifest_fingerprint"] == Manifest.load(digits_manifest).fingerprint

"""What `deploy score` and `deploy sample` take and write: shards checked whole, PNG grids
scaled, tables that fit any output (in-process, on real shards)."""

from __future__ import annotations

import io
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep.errors import DataPrepError, ShardError
from deploy.images import read_shard
from flows.viz import grid_shape, save_level_grid
from pipeline import cli


@pytest.fixture(scope="module")
def shard(manifest):
    return manifest.shard_paths("test")[0]


@pytest.fixture(scope="module")
def member_offsets(shard) -> list[int]:
    with tarfile.open(shard) as tar:
        return [member.offset for member in tar.getmembers()]


def _lone(tmp_path, name: str, data: bytes):
    """A shard file with no manifest.json beside it."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_shard_beside_its_manifest_is_read_whole(shard, manifest):
    warnings = []
    images = read_shard(shard, warn=warnings.append)
    assert len(images) == manifest.split("test").shards[0].count and not warnings
    assert images[0][0].startswith(shard.name + ":")


def test_a_shard_without_a_manifest_warns_that_its_length_is_unverified(shard, tmp_path):
    warnings = []
    copy = _lone(tmp_path, shard.name, shard.read_bytes())
    assert len(read_shard(copy, warn=warnings.append)) == 128
    assert warnings == [f"warning: {copy}: no manifest.json beside it lists this shard, so its "
                        "length cannot be verified"]


def test_a_shard_cut_at_a_member_boundary_is_refused(shard, member_offsets, tmp_path):
    cut = shard.read_bytes()[:member_offsets[100]]  # 50 whole samples, no end marker
    with pytest.raises(ShardError, match="truncated: it ends after 50 images"):
        read_shard(_lone(tmp_path, "cut.tar", cut), warn=lambda _: None)


def test_a_shard_cut_beside_its_manifest_fails_the_sha256(manifest, member_offsets, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(manifest.root, folder)
    target = folder / manifest.split("test").shards[0].name
    target.write_bytes(target.read_bytes()[:member_offsets[100]])
    with pytest.raises(ShardError, match="sha256 differs from manifest.json's"):
        read_shard(target)


def test_a_shard_cut_inside_a_member_names_the_member(shard, member_offsets, tmp_path):
    cut = shard.read_bytes()[:member_offsets[100] + 700]
    with pytest.raises(ShardError, match=r"not a readable tar shard after member 'digits\d+\."):
        read_shard(_lone(tmp_path, "mid.tar", cut), warn=lambda _: None)


def test_garbage_and_foreign_members_are_refused_by_name(tmp_path):
    with pytest.raises(ShardError, match="garbage.tar: not a readable tar shard"):
        read_shard(_lone(tmp_path, "garbage.tar", b"not a tar" * 200), warn=lambda _: None)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, payload in (("0001.png", b"GIF89a not a png"), ("0002.exe", b"MZ")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    odd = _lone(tmp_path, "odd.tar", buffer.getvalue())
    with pytest.raises(ShardError, match="member '0001.png' is not a PNG image"):
        read_shard(odd, warn=lambda _: None)


def test_deploy_score_on_a_bad_shard_is_exit_2_naming_it(registry, tmp_path, capsys):
    bad = _lone(tmp_path, "garbage.tar", b"\x00garbage" * 100)
    code = cli.main(["deploy", "score", "--tracking-uri", registry[0], "--model", "any", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "garbage.tar: not a readable tar shard" in err
    assert "Traceback" not in err


def test_deploy_and_the_loader_read_a_shard_alike(shard, manifest):
    """deploy's shard reading and the training loader: the same keys, the same arrays."""
    from data_prep import make_loader, shard_reader

    info = manifest.split("test").shards[0]
    images = read_shard(shard, warn=lambda _: None)
    keys = [sample.key for sample in shard_reader.read_shard(shard, info).samples()]
    x, _ = next(iter(make_loader(manifest, "test", info.count, mode="eval")))
    assert [name for name, _ in images] == [f"{shard.name}:{key}" for key in keys]
    assert len(set(keys)) == info.count
    np.testing.assert_array_equal(np.stack([image for _, image in images]), x.numpy())


def test_deploy_refuses_a_truncated_shard_with_data_preps_error(shard, member_offsets, registry,
                                                                 tmp_path, capsys):
    cut = _lone(tmp_path, "cut.tar", shard.read_bytes()[:member_offsets[100]])
    with pytest.raises(ShardError) as caught:
        read_shard(cut, warn=lambda _: None)
    assert isinstance(caught.value, DataPrepError) and caught.value.location == str(cut)
    assert caught.value.problem == ("truncated: it ends after 50 images without the tar "
                                    "end-of-archive marker")
    code = cli.main(["deploy", "score", "--tracking-uri", registry[0], "--model", "any", str(cut)])
    assert code == 2 and str(caught.value) in " ".join(capsys.readouterr().err.split())


def test_scaled_grids_repeat_each_pixel(tmp_path):
    levels = np.random.default_rng(0).integers(0, 17, (6, 1, 8, 8)).astype(np.uint8)
    plain = np.asarray(Image.open(save_level_grid(levels, 17, tmp_path / "a.png", 3)))
    big = np.asarray(Image.open(save_level_grid(levels, 17, tmp_path / "b.png", 3, scale=4)))
    assert plain.shape == grid_shape(6, (8, 8), 3) and big.shape == (4 * 22, 4 * 32)
    np.testing.assert_array_equal(big[::4, ::4], plain)
    np.testing.assert_array_equal(big[1::4, 3::4], plain)


def test_deploy_sample_scale_flag(registry, champion, tmp_path):
    from deploy_helpers import MODEL_NAME

    out = tmp_path / "big.png"
    args = ["deploy", "sample", "--tracking-uri", registry[0], "--model",
            f"{MODEL_NAME}@champion", "--n", "4", "--nrow", "2", "--out", str(out)]
    assert cli.main([*args, "--scale", "8"]) == 0
    with Image.open(out) as image:
        assert image.size == tuple(8 * side for side in grid_shape(4, (8, 8), 2))
    assert cli.main([*args, "--scale", "0"]) == 2


def test_models_list_is_not_cut_to_80_columns_in_a_pipe(registry, logged, capsys,
                                                        monkeypatch):
    import tracking
    from deploy import registry as reg

    monkeypatch.delenv("COLUMNS", raising=False)
    name = "a-registered-model-with-a-long-name-" + "x" * 40
    run_id, info = logged
    reg.register_version(tracking.client(registry[0]), name, info.model_uri,
                         reg.Candidate(2.5, 2.25, "digits-8x8-5bit", "f" * 64, run_id),
                         info.model_id)
    assert cli.main(["models", "list", "--tracking-uri", registry[0], "--name", name]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if name in line)
    assert len(row) > 80 and "…" not in row
    assert "2.5000" in row and "digits-8x8-5bit" in row and "pending" in row
    assert "2.2500" in row  # the val bpd promotion compares, beside the reported test bpd

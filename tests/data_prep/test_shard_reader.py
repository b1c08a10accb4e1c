"""The one tar-shard reader and PNG decoder: member layout, folders, labels, PNG modes, and
the error every reader of shards raises (on tars built here, member by member)."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_prep import Manifest
from data_prep.errors import DataPrepError, ShardError
from data_prep.png import decode_png
from data_prep.shard_reader import listed_beside, parse_shard
from data_prep.shards import encode_image

PNG = encode_image(np.arange(12, dtype=np.uint8).reshape(3, 4, 1))


def _tar(*members: tuple[str, bytes], folder: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        if folder is not None:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _problem(data: bytes) -> str:
    with pytest.raises(ShardError) as caught:
        list(parse_shard("s.tar", data).samples())
    return caught.value.problem


def test_samples_are_an_image_and_an_optional_label():
    shard = parse_shard("s.tar", _tar(("a.png", PNG), ("a.cls", b"3"), ("b.png", PNG),
                                      folder="sub"))
    assert [(s.key, s.png, s.label) for s in shard.samples()] == [("a", PNG, 3), ("b", PNG, -1)]
    assert [s.key for s in shard.samples(1, 2)] == ["b"]
    assert [s.attributes for s in shard.samples()] == [None, None]


def test_attribute_flags_are_an_optional_member():
    shard = parse_shard("s.tar", _tar(("a.attr", b"0110"), ("a.png", PNG), ("b.png", PNG)))
    a, b = shard.samples()
    assert a.attributes.tolist() == [False, True, True, False] and b.attributes is None
    assert _problem(_tar(("a.png", PNG), ("a.attr", b"01-1"))) == (
        "member 'a.attr' is not attribute flags (ASCII '0'/'1'; got b'01-1')")
    assert _problem(_tar(("a.png", PNG), ("a.attr", b""))).startswith(
        "member 'a.attr' is not attribute flags")


def test_wrong_members_are_named():
    assert _problem(_tar(("a.png", PNG), ("a.txt", b"hi"))) == (
        "member 'a.txt' is not a sample of an image shard (expected KEY.png images, KEY.cls "
        "labels and KEY.attr attribute flags)")
    assert _problem(_tar(("a.cls", b"1"))).startswith("sample 'a' has no image")
    assert _problem(_tar(("a.png", PNG), ("a.cls", b"three"))) == (
        "member 'a.cls' is not a class label (b'three')")


def test_a_shard_error_is_a_data_prep_error_that_survives_pickling():
    error = ShardError("s.tar", "shard is missing")
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, DataPrepError) and str(again) == str(error)
    assert (again.location, again.problem) == ("s.tar", "shard is missing")
    assert str(error).startswith("s.tar: shard is missing: the shard is truncated or corrupt")


def test_listed_beside_finds_the_manifest_entry(digits_manifest, tmp_path):
    manifest = Manifest.load(digits_manifest)
    shard = manifest.shard_paths("test")[0]
    assert listed_beside(shard) == manifest.split("test").shards[0]
    assert listed_beside(tmp_path / "lone.tar") is None
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(DataPrepError, match="cannot read it to verify lone.tar"):
        listed_beside(tmp_path / "lone.tar")


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_decode_png_modes():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_image(rgb)), rgb)
    assert decode_png(PNG).shape == (3, 4, 1)
    np.testing.assert_array_equal(decode_png(_png(Image.fromarray(rgb).convert("RGBA"))), rgb)
    palette = Image.fromarray(rgb).convert("P")
    np.testing.assert_array_equal(decode_png(_png(palette)), np.asarray(palette.convert("RGB")))
    assert decode_png(_png(Image.new("LA", (2, 3), (7, 200)))).tolist() == [[[7]] * 2] * 3


def test_decode_png_refuses_what_is_not_an_8_bit_png():
    with pytest.raises(ValueError, match="expected an 8-bit PNG, got uint16"):
        decode_png(_png(Image.fromarray(np.full((2, 2), 300, dtype=np.uint16))))
    with pytest.raises(ValueError, match="unsupported PNG mode 1"):
        decode_png(_png(Image.new("1", (2, 2))))
    with pytest.raises(ValueError, match=r"not a PNG file \(starts with b'GIF89a"):
        decode_png(b"GIF89a not a png")
    with pytest.raises(ValueError, match="damaged PNG data"):
        decode_png(PNG[:50])  # cut inside the image data

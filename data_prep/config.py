"""Typed settings of the data_prep stage (the `data_prep:` section of pipeline.yaml)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_prep.storage import Location

# Samples per shard when `shard_max_count` is not set: digits is tiny, so small shards give
# several per split (2 ranks x 2 loader workers each get one); the image sets use bigger ones.
DEFAULT_SHARD_MAX_COUNT = {"digits": 128, "cifar10": 2048, "celeba": 2048}


class DataPrepConfig(BaseModel):
    """Which dataset to shard, from where, and how to cut it into shards and splits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["digits", "cifar10", "celeba"] = Field(
        "digits",
        description="Dataset to shard: `digits` (scikit-learn's bundled 8x8 digits, offline), "
        "`cifar10` (32x32x3, 8-bit) or `celeba` (aligned faces, cropped and resized).",
    )
    source: Location | None = Field(
        None,
        description="Raw data, a local path or a URL (s3://…, gs://…). cifar10: "
        "`cifar-10-python.tar.gz` or the extracted `cifar-10-batches-py/` folder (or a folder "
        "holding either); celeba: the folder with `img_align_celeba/` and "
        "`list_eval_partition.txt`. Unused for digits.",
    )
    output_root: Location = Field(
        "data/shards",
        description="Shards go to `{output_root}/{dataset}-{H}x{W}-{bits}bit/`: a local path "
        "or an object-store URL (s3://bucket/prefix, gs://bucket/prefix), which every rank then "
        "streams from.",
    )
    ray_workers: int | None = Field(
        None,
        ge=1,
        description="Write shards as Ray tasks, this many at once (one task per group of "
        "shards, on the local Ray or across the cluster; the shards are byte-identical). "
        "null: in the pipeline's own process. On a multi-node cluster `source` and "
        "`output_root` must be URLs or shared paths.",
    )
    shard_max_count: int | None = Field(
        None,
        gt=0,
        description="Most samples per shard. Unset: 128 for digits (several shards per split, "
        "so every rank and loader worker gets one), 2048 for cifar10 and celeba.",
    )
    shard_max_bytes: int = Field(
        256 * 2**20,
        gt=0,
        description="Most bytes per shard (tar headers included); a shard closes at whichever "
        "of the count and byte limits comes first.",
    )
    seed: int = Field(
        0,
        ge=0,
        description="Seed of the train/val/test split (digits; cifar10 when a val split is "
        "carved from train).",
    )
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="Share of the images in the test split (digits only; cifar10 and celeba "
        "use their official test splits).",
    )
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the images in the val split, on which training, tuning and "
        "promotion choose models (the test split is scored once, for the chosen model). "
        "digits: drawn by `seed`; cifar10: this share of the official 50,000 train images "
        "(0.1: 5,000), drawn by `seed`; celeba: the official val partition, whatever the value.",
    )
    crop: int = Field(
        148,
        gt=0,
        description="celeba: side of the center square cropped from each aligned image.",
    )
    size: int = Field(
        64,
        gt=0,
        description="celeba: side of the stored image after resizing the crop.",
    )
    n_bits: int = Field(
        5,
        ge=1,
        le=8,
        description="celeba: bits per channel kept (levels 0..2**n_bits-1 are stored, "
        "n_bins = 2**n_bits).",
    )
    download: bool = Field(
        False,
        description="cifar10: download the official archive into `source` when it is absent "
        "(needs a network; off by default).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_shard_count(cls, data: Any) -> Any:
        """Fill in the dataset's shard size so `config show` prints the value in use."""
        if isinstance(data, dict) and data.get("shard_max_count") is None:
            dataset = data.get("dataset", "digits")
            if dataset in DEFAULT_SHARD_MAX_COUNT:
                data = {**data, "shard_max_count": DEFAULT_SHARD_MAX_COUNT[dataset]}
        return data

    @model_validator(mode="after")
    def _check_consistent(self) -> DataPrepConfig:
        if self.dataset == "digits" and self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"test_fraction + val_fraction must be < 1 (got {self.test_fraction} + "
                f"{self.val_fraction}); no images would be left for train"
            )
        if self.dataset == "celeba" and self.size > self.crop:
            raise ValueError(f"size ({self.size}) must not exceed crop ({self.crop})")
        return self

    @property
    def max_count(self) -> int:
        """Samples per shard in use (the dataset default when unset)."""
        return self.shard_max_count or DEFAULT_SHARD_MAX_COUNT[self.dataset]

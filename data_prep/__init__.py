"""Raw image datasets -> webdataset tar shards + manifest, and a rank-aware loader for them."""

from data_prep.config import DataPrepConfig
from data_prep.errors import DataPrepError
from data_prep.loader import ShardLoader, make_loader
from data_prep.manifest import Manifest
from data_prep.prepare import prepare

__all__ = ["DataPrepConfig", "DataPrepError", "Manifest", "ShardLoader", "make_loader", "prepare"]

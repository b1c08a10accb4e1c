"""The one error type data_prep raises for bad input."""

from __future__ import annotations


class DataPrepError(ValueError):
    """Bad or missing input data, or a damaged shard set.

    The message names the file and says what to do about it; the CLI prints it without a
    traceback.
    """

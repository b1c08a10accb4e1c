"""The one error type data_prep raises for bad input."""

from __future__ import annotations


class DataPrepError(ValueError):
    """Bad or missing input data, or a damaged shard set.

    The message names the file and says what to do about it; the CLI prints it without a
    traceback.
    """


class ShardError(DataPrepError):
    """A shard that cannot be read as it is: `problem` says what is wrong with `location`."""

    def __init__(self, location: str, problem: str):
        super().__init__(
            f"{location}: {problem}: the shard is truncated or corrupt; run the data_prep stage "
            "again (it re-verifies the shards and rewrites the damaged ones)"
        )
        self.location, self.problem = location, problem

    def __reduce__(self):  # picklable across loader workers and Ray with both arguments
        return type(self), (self.location, self.problem)

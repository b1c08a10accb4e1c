"""STUB — the tune engineer replaces this with the full TuneConfig."""

from pydantic import BaseModel, ConfigDict, Field


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    num_samples: int = Field(4, gt=0, description="Number of trials.")

"""STUB — the deploy engineer replaces this with the full configs."""

from pydantic import BaseModel, ConfigDict


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromoteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeployConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

"""The MLflow Model Registry as the hand-off: register versions, gate the `champion` alias.

A new version is registered (`mlflow.register_model` on the logged model, so the version and
the logged model link to each other) with tags (val bpd, test bpd, dataset, manifest
fingerprint, git commit, training run id, the bundle's sha256 that every load checks) and the
alias `challenger`. It takes `champion` only if its val bpd beats the champion's by `margin`
bits/dim on the same val split (same manifest fingerprint): the choice is made on val, so the
test bpd each version reports was never used to choose it.

Race safety (two pipelines finishing at once). A version is created *with* the tag
`nfpipe.promotion=pending` (one atomic registry call), and versions are decided strictly in
version order: a promotion first waits until no lower version of the same model is still
pending, then reads the champion, compares, moves the alias, and finally records its decision
(`promoted` / `kept` plus the reason) on its version. The registry's version numbers are the
tickets of a queue, so no two decisions overlap and the later one always sees the earlier one's
alias - this works the same on SQLite and on a remote `mlflow server`, with no lock object to
clean up.

A pending version whose promotion died (the pipeline crashed after registering) is resolved
once: the first promotion that finds it older than `queue_timeout_s` (at once, or after waiting
that long) tags it `abandoned`, so no later promotion waits for it. Promoting the same weights
of the same run again reuses their version (pending, abandoned or decided) instead of adding a
duplicate.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION_TAG = "nfpipe.promotion"  # pending | promoted | kept | abandoned
REASON_TAG = "nfpipe.promotion_reason"
BUNDLE_TAG = "nfpipe.bundle_sha256"  # deploy.pyfunc.bundle_sha256 of the registered files
VAL_TAG = "val_bpd"  # the chosen model's val bpd: promotion compares it
PENDING = "pending"
ABANDONED = "abandoned"


@dataclass(frozen=True)
class Candidate:
    """What the registry records about one evaluated model."""

    test_bpd: float  # reported (registry tag, `nfpipe models list`), never compared
    val_bpd: float  # what the gate compares
    dataset: str
    manifest_fingerprint: str
    run_id: str
    family: str = ""
    git_commit: str = ""
    bundle_sha256: str = ""
    epoch: int = 0  # the epoch the weights come from: the run's metrics there go on the model
    final_metrics: tuple[tuple[str, float], ...] = ()  # also put on the logged model
    bpd_at_k: dict[str, float] = field(default_factory=dict)  # {"test_bpd_k64": …}

    def tags(self) -> dict[str, str]:
        return {
            "test_bpd": repr(float(self.test_bpd)),
            VAL_TAG: repr(float(self.val_bpd)),
            **{name: repr(float(value)) for name, value in self.bpd_at_k.items()},
            "dataset": self.dataset,
            "manifest_fingerprint": self.manifest_fingerprint,
            "training_run_id": self.run_id,
            "model_family": self.family,
            "git_commit": self.git_commit or tracking.git_commit() or "unknown",
            BUNDLE_TAG: self.bundle_sha256,
            PROMOTION_TAG: PENDING,
        }


@dataclass(frozen=True)
class Decision:
    """The outcome of one promotion: whether `version` took `champion`, and why."""

    model_name: str
    version: str
    champion_version: str | None
    promoted: bool
    reason: str


def register_version(client, name: str, model_uri: str, candidate: Candidate,
                     model_id: str | None = None):
    """`create_version`, then the alias `challenger` on it."""
    version = create_version(client, name, model_uri, candidate, model_id)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def create_version(client, name: str, model_uri: str, candidate: Candidate,
                   model_id: str | None = None):
    """A version of `name` from a logged model, tagged (pending) in the one call that creates
    it; no alias yet. With `model_id`, `mlflow.register_model` links the version and the
    logged model (MLflow's fluent registry URI must point at `client`'s store). Its progress
    lines ("Registered model … already exists", printed even on a fresh store since the
    registered model is created first, here; "Created version …") are not shown: the stage
    says what happened in its own words."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name, description="nfpipe density model "
                                       "(pyfunc: bits/dim per image, or samples)")
    except MlflowException as err:
        if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
            raise
    source = f"models:/{model_id}" if model_id else model_uri
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints with print(file=stderr)
        version = mlflow.register_model(source, name, tags=candidate.tags())
    client.update_model_version(name, version.version, description=(
        f"test bpd {candidate.test_bpd:.4f} (chosen on val {candidate.val_bpd:.4f}) on "
        f"{candidate.dataset} ({candidate.manifest_fingerprint[:12]})"))
    return version


def gate(candidate: Any, champion: Any | None, margin: float,
         replace_on_new_dataset: bool = False) -> tuple[bool, str]:
    """Should `candidate` (a ModelVersion) take the alias from `champion`? And why.

    Both are compared by their val bpd tag, on the same val split (manifest fingerprint)."""
    mine = _bpd(candidate, VAL_TAG)
    if mine is None or not math.isfinite(mine):
        return False, f"v{candidate.version} has no finite {VAL_TAG} tag ({mine})"
    if champion is None:
        return True, (f"no champion yet; v{candidate.version} (val {mine:.4f} bpd) becomes "
                      "champion")
    if str(champion.version) == str(candidate.version):
        return True, f"v{candidate.version} already is champion"
    theirs = _bpd(champion, VAL_TAG)
    fp_new = candidate.tags.get("manifest_fingerprint", "")
    fp_old = champion.tags.get("manifest_fingerprint", "")
    if fp_old and fp_new != fp_old:
        why = (f"champion v{champion.version} was evaluated on another dataset "
               f"(manifest {fp_old[:12]} vs {fp_new[:12]}), so the bpd are not comparable")
        if replace_on_new_dataset:
            return True, why + "; promote.replace_on_new_dataset is set"
        return False, why + "; set promote.replace_on_new_dataset=true to replace it"
    if theirs is None or not fp_old:
        return False, (f"champion v{champion.version} has no {VAL_TAG}/manifest_fingerprint "
                       "tags, so it cannot be compared; move the alias by hand if wanted")
    if mine < theirs - margin:
        return True, (f"v{candidate.version} val {mine:.4f} bpd beats champion "
                      f"v{champion.version} {theirs:.4f} by {theirs - mine:.4f} "
                      f"(margin {margin})")
    return False, (f"v{candidate.version} val {mine:.4f} bpd does not beat champion "
                   f"v{champion.version} {theirs:.4f} by the margin {margin}")


def promote(client, name: str, version: str | int, margin: float = 0.0, *,
            replace_on_new_dataset: bool = False, queue_timeout_s: float = 120.0,
            poll_s: float = 0.2, after_read: Callable[[], None] | None = None) -> Decision:
    """Decide whether `version` takes `champion` (serialised in version order, see above).

    `after_read` runs between reading the champion and writing the alias (tests use it to widen
    the race window).
    """
    version = str(version)
    wait_for_turn(client, name, version, queue_timeout_s, poll_s)
    candidate = client.get_model_version(name, version)
    champion = champion_version(client, name)
    promoted, reason = gate(candidate, champion, margin, replace_on_new_dataset)
    if after_read is not None:
        after_read()
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, REASON_TAG, reason)
    client.set_model_version_tag(name, version, PROMOTION_TAG, "promoted" if promoted else "kept")
    holder = champion_version(client, name)
    log.info("%s v%s: %s", name, version, reason)
    return Decision(name, version, str(holder.version) if holder else None, promoted, reason)


def wait_for_turn(client, name: str, version: str, timeout_s: float, poll_s: float) -> None:
    """Block while a lower version of `name` is still pending (its promotion is running).

    A pending version older than `timeout_s`, or still pending after waiting that long, is
    marked abandoned (once: later promotions no longer see it as pending)."""
    start = time.monotonic()
    while True:
        ahead = [v for v in versions(client, name)
                 if int(v.version) < int(version) and v.tags.get(PROMOTION_TAG) == PENDING]
        waited_out = time.monotonic() - start > timeout_s
        dead = [v for v in ahead if waited_out or _age_s(v) > timeout_s]
        for stale in dead:
            mark_abandoned(client, name, stale, version, timeout_s)
        if len(dead) == len(ahead):
            return
        time.sleep(poll_s)


def mark_abandoned(client, name: str, stale: Any, by_version: str, timeout_s: float) -> None:
    """Tag a pending version whose promotion never finished as abandoned, with the reason."""
    reason = (f"its promotion did not finish within {timeout_s:.0f} s (the pipeline stopped "
              f"after registering it); marked abandoned by v{by_version}'s promotion")
    client.set_model_version_tag(name, stale.version, REASON_TAG, reason)
    client.set_model_version_tag(name, stale.version, PROMOTION_TAG, ABANDONED)
    log.warning("%s v%s: %s", name, stale.version, reason)


def _age_s(version: Any) -> float:
    created_ms = version.creation_timestamp or 0
    return time.time() - created_ms / 1000.0


def champion_version(client, name: str, alias: str = CHAMPION):
    """The version holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        missing = err.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")
        if missing or "not found" in err.message:
            return None
        raise


def versions(client, name: str) -> list:
    """All versions of `name`, oldest first."""
    escaped = name.replace("'", "\\'")
    found = client.search_model_versions(f"name='{escaped}'")
    return sorted(found, key=lambda v: int(v.version))


def list_models(client, name: str | None = None) -> list[dict[str, Any]]:
    """Registered models and their versions as plain rows (newest version first)."""
    rows = []
    for model in client.search_registered_models():
        if name is not None and model.name != name:
            continue
        aliases: dict[str, list[str]] = {}
        for alias, number in (model.aliases or {}).items():
            aliases.setdefault(str(number), []).append(alias)
        for v in reversed(versions(client, model.name)):
            bpd = _bpd(v, "test_bpd")
            rows.append({
                "model": model.name,
                "version": int(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "test_bpd": bpd,
                "val_bpd": _bpd(v, VAL_TAG),
                "test_bpd_k": _bpd_at_k(v),
                "dataset": v.tags.get("dataset", ""),
                "manifest_fingerprint": v.tags.get("manifest_fingerprint", ""),
                "run_id": v.tags.get("training_run_id") or v.run_id or "",
                "promotion": v.tags.get(PROMOTION_TAG, ""),
                "reason": v.tags.get(REASON_TAG, ""),
                "git_commit": v.tags.get("git_commit", ""),
                "created": v.creation_timestamp,
            })
    return rows


def _bpd_at_k(version: Any) -> dict[str, float]:
    """The importance-weighted figures of a version, {"64": bpd} from its test_bpd_k64 tag."""
    found = {}
    for name, value in (version.tags or {}).items():
        if name.startswith("test_bpd_k") and name[len("test_bpd_k"):].isdigit():
            try:
                found[name[len("test_bpd_k"):]] = float(value)
            except ValueError:
                continue
    return found


def _bpd(version: Any, tag: str) -> float | None:
    try:
        return float(version.tags[tag])
    except (KeyError, TypeError, ValueError):
        return None


def register_and_promote(tracking_uri: str, name: str, bundle_dir: str | Path,
                         candidate: Candidate, cfg: Any,
                         after_read: Callable[[], None] | None = None) -> tuple[Decision, str]:
    """Log the bundle as a pyfunc into the candidate's run, register it, run the gate.

    `cfg` is a `PromoteConfig`; MLflow's fluent API is pointed at `tracking_uri` (the model is
    logged with it). The same weights of the same run already registered (a promotion that
    crashed half-way, or a re-run) are promoted again under their version, not registered
    twice. Returns (decision, the version's URI).
    """
    import dataclasses

    from deploy.pyfunc import bundle_sha256

    tracking.use_store(tracking_uri)
    client = tracking.client(tracking_uri)
    candidate = dataclasses.replace(candidate, bundle_sha256=bundle_sha256(bundle_dir))
    version = existing_version(client, name, candidate)
    if version is None:
        version = log_and_register(client, name, bundle_dir, candidate, cfg)
    else:
        log.info("%s v%s already holds these weights of run %s; promoting it again", name,
                 version.version, candidate.run_id)
    # here, not in log_and_register: a promote killed in between left a version without it
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    decision = promote(client, name, version.version, cfg.margin,
                       replace_on_new_dataset=cfg.replace_on_new_dataset,
                       queue_timeout_s=cfg.queue_timeout_s, after_read=after_read)
    return decision, f"models:/{name}/{version.version}"


def log_and_register(client, name: str, bundle_dir: str | Path, candidate: Candidate,
                     cfg: Any):
    """Log the bundle into the candidate's run and register it: the version, without alias."""
    info = _log_into_run(bundle_dir, candidate, cfg)
    return create_version(client, name, info.model_uri, candidate, info.model_id)


def _log_into_run(bundle_dir: str | Path, candidate: Candidate, cfg: Any):
    """Log the model at the step its weights come from, plus the final metrics on it."""
    import mlflow

    from deploy.pyfunc import Limits, log_bundle

    limits = Limits(max_batch=cfg.max_batch, max_samples=cfg.max_samples,
                    max_work=cfg.max_work)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == candidate.run_id:
        info = log_bundle(bundle_dir, limits, step=candidate.epoch)
    else:
        with mlflow.start_run(run_id=candidate.run_id, nested=active is not None):
            info = log_bundle(bundle_dir, limits, step=candidate.epoch)
    if candidate.final_metrics:
        mlflow.log_metrics(dict(candidate.final_metrics), step=candidate.epoch,
                           run_id=candidate.run_id, model_id=info.model_id)
    return info


def existing_version(client, name: str, candidate: Candidate):
    """The newest version holding these weights of this run (any state), else None."""
    for v in reversed(versions(client, name)):
        same_run = v.tags.get("training_run_id") == candidate.run_id
        if same_run and v.tags.get(BUNDLE_TAG) == candidate.bundle_sha256:
            return v
    return None

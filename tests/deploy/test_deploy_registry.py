"""The promotion gate and its race safety, on a real SQLite-backed MLflow registry."""

from __future__ import annotations

import threading
import time

import pytest

import tracking
from deploy import registry as reg
from deploy.pyfunc import bundle_sha256
from deploy.registry import Candidate


def _candidate(run_id: str, bpd: float, fingerprint: str = "fp-a",
               test_bpd: float | None = None) -> Candidate:
    """`bpd`: the val bpd the gate compares (the test bpd too unless `test_bpd` is given)."""
    return Candidate(test_bpd=bpd if test_bpd is None else test_bpd, val_bpd=bpd,
                     dataset="digits", manifest_fingerprint=fingerprint, run_id=run_id,
                     family="glow", git_commit="abc123")


def _register(client, name: str, logged, bpd: float, fingerprint: str = "fp-a",
              test_bpd: float | None = None) -> str:
    run_id, info = logged
    version = reg.register_version(client, name, info.model_uri,
                                   _candidate(run_id, bpd, fingerprint, test_bpd), info.model_id)
    return str(version.version)


@pytest.fixture
def client(registry):
    return tracking.client(registry[0])


def test_gate_keeps_worse_takes_better_and_history_shows_both(client, logged):
    name = "gate"
    v1 = _register(client, name, logged, 3.0)
    assert reg.promote(client, name, v1).promoted
    v2 = _register(client, name, logged, 3.5)
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
    kept = reg.promote(client, name, v2, margin=0.01)
    assert not kept.promoted and kept.champion_version == v1
    assert "does not beat champion v1" in kept.reason
    v3 = _register(client, name, logged, 2.995)  # better, but not by the margin
    assert not reg.promote(client, name, v3, margin=0.01).promoted
    v4 = _register(client, name, logged, 2.5)
    won = reg.promote(client, name, v4, margin=0.01)
    assert won.promoted and won.champion_version == v4
    assert str(client.get_model_version_by_alias(name, "champion").version) == v4

    history = {row["version"]: row for row in reg.list_models(client, name)}
    assert [history[int(v)]["promotion"] for v in (v1, v2, v3, v4)] == [
        "promoted", "kept", "kept", "promoted"]
    assert history[int(v4)]["aliases"] == ["challenger", "champion"]
    assert history[int(v2)]["test_bpd"] == 3.5
    tags = client.get_model_version(name, v2).tags
    assert tags["training_run_id"] == logged[0] and tags["git_commit"] == "abc123"
    assert tags["dataset"] == "digits" and tags["manifest_fingerprint"] == "fp-a"


def test_the_gate_compares_val_bpd_never_test_bpd(client, logged):
    name = "on-val"
    v1 = _register(client, name, logged, 3.0, test_bpd=3.0)
    assert reg.promote(client, name, v1).promoted
    v2 = _register(client, name, logged, 3.5, test_bpd=2.0)  # better on test, worse on val
    kept = reg.promote(client, name, v2)
    assert not kept.promoted and "val 3.5000 bpd does not beat champion v1 3.0000" in kept.reason
    v3 = _register(client, name, logged, 2.5, test_bpd=4.0)  # worse on test, better on val
    won = reg.promote(client, name, v3)
    assert won.promoted and "val 2.5000 bpd beats champion" in won.reason
    rows = {row["version"]: row for row in reg.list_models(client, name)}
    assert (rows[int(v3)]["test_bpd"], rows[int(v3)]["val_bpd"]) == (4.0, 2.5)


def test_a_champion_without_a_val_tag_is_not_compared(client, logged):
    """A champion registered before val bpd was tagged: refused on the same dataset, and
    replaceable on a new one (its shards had no val split, so its manifest differs)."""
    name = "no-val-tag"
    v1 = _register(client, name, logged, 3.0)
    assert reg.promote(client, name, v1).promoted
    client.delete_model_version_tag(name, v1, reg.VAL_TAG)
    v2 = _register(client, name, logged, 1.0)
    refused = reg.promote(client, name, v2)
    assert not refused.promoted and "has no val_bpd/manifest_fingerprint tags" in refused.reason
    v3 = _register(client, name, logged, 1.0, "fp-with-val")
    assert reg.promote(client, name, v3, replace_on_new_dataset=True).promoted


def test_other_test_split_is_not_comparable(client, logged):
    name = "new-split"
    v1 = _register(client, name, logged, 3.0, "fp-a")
    reg.promote(client, name, v1)
    v2 = _register(client, name, logged, 1.0, "fp-b")  # far better, but another test split
    decision = reg.promote(client, name, v2)
    assert not decision.promoted and "not comparable" in decision.reason
    v3 = _register(client, name, logged, 5.0, "fp-b")
    assert reg.promote(client, name, v3, replace_on_new_dataset=True).promoted


def _race(uri: str, client, logged, name: str) -> tuple[str, str]:
    """Two pipelines finish at once: A (worse, registered first) reads the champion, then
    stalls before writing while B (better) promotes. Returns (final champion, B's version).

    A stalls until B is done, or 1.5 s when B cannot finish first (B waits for A's turn)."""
    reg.promote(client, name, _register(client, name, logged, 4.0))
    a = _register(client, name, logged, 3.0)
    b = _register(client, name, logged, 2.0)
    a_has_read, b_done, errors = threading.Event(), threading.Event(), []

    def stall() -> None:
        a_has_read.set()
        b_done.wait(1.5)

    def pipeline(version: str, after_read=None, done=None) -> None:
        try:
            reg.promote(tracking.client(uri), name, version, poll_s=0.05, after_read=after_read)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
        finally:
            if done is not None:
                done.set()

    first = threading.Thread(target=pipeline, args=(a, stall))
    second = threading.Thread(target=pipeline, args=(b, None, b_done))
    first.start()
    assert a_has_read.wait(30), "A never read the champion"
    second.start()
    for t in (first, second):
        t.join(60)
    assert not errors, errors
    return str(client.get_model_version_by_alias(name, "champion").version), b


def test_two_pipelines_finishing_at_once_keep_the_better(registry, client, logged):
    champion, better = _race(registry[0], client, logged, "race")
    assert champion == better
    decided = {v.version: v.tags[reg.PROMOTION_TAG] for v in reg.versions(client, "race")}
    assert set(decided.values()) == {"promoted"}  # A took it from v1, then B from A


def test_race_is_real_without_the_queue(registry, client, logged, monkeypatch):
    """Control: with the version-order queue switched off, the stale writer wins."""
    monkeypatch.setattr(reg, "wait_for_turn", lambda *args, **kwargs: None)
    champion, better = _race(registry[0], client, logged, "race-unguarded")
    assert champion != better


def test_abandoned_pending_version_is_resolved_once_then_never_waited_on(client, logged):
    name = "abandoned"
    v1 = _register(client, name, logged, 3.0)  # its pipeline "died": never promoted
    v2 = _register(client, name, logged, 2.0)
    start = time.monotonic()  # v1 may already be older than the timeout: then no wait at all
    assert reg.promote(client, name, v2, queue_timeout_s=2.0, poll_s=0.05).promoted
    assert time.monotonic() - start < 10
    stale = client.get_model_version(name, v1).tags
    assert stale[reg.PROMOTION_TAG] == reg.ABANDONED
    assert "did not finish within 2 s" in stale[reg.REASON_TAG]
    v3 = _register(client, name, logged, 1.0)
    start = time.monotonic()
    assert reg.promote(client, name, v3, queue_timeout_s=60.0, poll_s=0.05).promoted
    assert time.monotonic() - start < 3  # v1 is resolved: nothing is waited for again


def test_fresh_pending_version_is_waited_for_then_marked(client, logged):
    name = "abandoned-fresh"
    v1 = _register(client, name, logged, 3.0)
    v2 = _register(client, name, logged, 2.0)
    # a timeout 1 s past v1's age: v1 counts as alive, is waited for, then marked abandoned
    timeout = 1.0 + (time.time() - client.get_model_version(name, v1).creation_timestamp / 1000)
    start = time.monotonic()
    assert reg.promote(client, name, v2, queue_timeout_s=timeout, poll_s=0.05).promoted
    waited = time.monotonic() - start
    assert 0.5 <= waited < 10, waited  # v1 was younger than the timeout: waited for it
    assert client.get_model_version(name, v1).tags[reg.PROMOTION_TAG] == reg.ABANDONED


def test_gate_without_finite_bpd_never_promotes(client, logged):
    name = "nan"
    v1 = _register(client, name, logged, float("nan"))
    decision = reg.promote(client, name, v1)
    assert not decision.promoted and decision.champion_version is None


@pytest.mark.slow
def test_version_links_to_its_logged_model_with_the_final_metrics(registry, bundle, capfd):
    """register_model: the logged model lists the version; its metrics are those of the
    epoch the weights come from (not epoch 0) plus the evaluated bpd; a re-run of the same
    promotion reuses the version. Registering a new model prints nothing of MLflow's
    ("Registered model … already exists. Creating a new version")."""
    import json

    from deploy_helpers import new_run

    from deploy.config import PromoteConfig

    uri, experiment = registry
    client = tracking.client(uri)
    run_id = new_run(uri, experiment)
    for epoch, bpd in enumerate((3.9, 3.5, 3.2)):
        client.log_metric(run_id, "test_bpd", bpd, step=epoch)
    candidate = Candidate(3.1, 3.0, "digits", "fp-link", run_id, "glow", epoch=2,
                          final_metrics=(("eval_test_bpd", 3.1),))
    capfd.readouterr()
    decision, model_uri = reg.register_and_promote(uri, "linked", bundle, candidate,
                                                   PromoteConfig())
    printed = capfd.readouterr()
    assert "Registered model" not in printed.out + printed.err
    assert "Created version" not in printed.out + printed.err
    version = client.get_model_version("linked", decision.version)
    model_id = version.source.removeprefix("models:/")
    logged_model = client.get_logged_model(model_id)
    assert version.run_id == run_id and logged_model.source_run_id == run_id
    links = json.loads(logged_model.tags["mlflow.modelVersions"])
    assert {"name": "linked", "version": decision.version} in [
        {"name": link["name"], "version": str(link["version"])} for link in links]
    metrics = {(m.key, m.value) for m in logged_model.metrics}
    assert ("test_bpd", 3.2) in metrics and ("eval_test_bpd", 3.1) in metrics
    assert ("test_bpd", 3.9) not in metrics
    assert version.tags[reg.BUNDLE_TAG] == bundle_sha256(bundle)

    again, again_uri = reg.register_and_promote(uri, "linked", bundle, candidate,
                                                PromoteConfig())
    assert again_uri == model_uri and len(reg.versions(client, "linked")) == 1


def test_a_promote_killed_after_registering_gets_the_challenger_alias_on_rerun(registry,
                                                                               bundle):
    import dataclasses

    from deploy_helpers import new_run

    from deploy.config import PromoteConfig

    uri, experiment = registry
    client = tracking.client(uri)
    candidate = Candidate(3.1, 3.1, "digits", "fp-killed", new_run(uri, experiment), "glow")
    # what a promote killed between registering the version and setting its alias left
    tracking.use_store(uri)
    left = reg.log_and_register(client, "killed", bundle, dataclasses.replace(
        candidate, bundle_sha256=bundle_sha256(bundle)), PromoteConfig())
    assert reg.CHALLENGER not in client.get_registered_model("killed").aliases

    decision, _ = reg.register_and_promote(uri, "killed", bundle, candidate, PromoteConfig())
    assert decision.version == str(left.version) and decision.promoted
    assert len(reg.versions(client, "killed")) == 1
    assert client.get_registered_model("killed").aliases == {
        reg.CHALLENGER: int(left.version), reg.CHAMPION: int(left.version)}


PROMOTE_ONE = """
import sys
from deploy.config import PromoteConfig
from deploy.registry import Candidate, register_and_promote
uri, name, bundle, run_id, bpd = sys.argv[1:]
decision, _ = register_and_promote(uri, name, bundle,
                                   Candidate(float(bpd), float(bpd), "digits", "fp-three",
                                             run_id),
                                   PromoteConfig(queue_timeout_s=300))
print("decided", decision.version, decision.promoted)
"""


@pytest.mark.slow
def test_three_concurrent_promotions_keep_the_best_without_lock_errors(registry, bundle):
    """Three processes register and promote into one SQLite store at once."""
    import subprocess
    import sys

    from deploy_helpers import new_run
    from helpers import REPO, subprocess_env

    uri, experiment = registry
    bpds = {new_run(uri, experiment): bpd for bpd in (3.3, 3.1, 3.2)}
    procs = [subprocess.Popen([sys.executable, "-c", PROMOTE_ONE, uri, "three", str(bundle),
                               run_id, str(bpd)], env=subprocess_env(PYTHONPATH=str(REPO)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for run_id, bpd in bpds.items()]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "database is locked" not in out + err
    client = tracking.client(uri)
    holder = client.get_model_version_by_alias("three", "champion")
    assert float(holder.tags["test_bpd"]) == 3.1
    states = [v.tags[reg.PROMOTION_TAG] for v in reg.versions(client, "three")]
    assert len(states) == 3 and reg.PENDING not in states


def test_the_k_draw_bound_is_tagged_and_listed():
    from types import SimpleNamespace

    from deploy.registry import Candidate, _bpd_at_k

    tags = Candidate(test_bpd=1.9, val_bpd=1.95, dataset="digits", manifest_fingerprint="f",
                     run_id="r", bpd_at_k={"test_bpd_k64": 1.85}).tags()
    assert float(tags["test_bpd"]) == 1.9 and float(tags["test_bpd_k64"]) == 1.85
    assert float(tags["val_bpd"]) == 1.95
    assert _bpd_at_k(SimpleNamespace(tags=tags)) == {"64": 1.85}
    assert _bpd_at_k(SimpleNamespace(tags={"test_bpd_kx": "1", "test_bpd_k8": "nan?"})) == {}

"""The promotion gate and its race safety, on a real SQLite-backed MLflow registry."""

from __future__ import annotations

import threading
import time

import pytest

import tracking
from deploy import registry as reg
from deploy.registry import Candidate


def _candidate(run_id: str, bpd: float, fingerprint: str = "fp-a") -> Candidate:
    return Candidate(test_bpd=bpd, dataset="digits", manifest_fingerprint=fingerprint,
                     run_id=run_id, family="glow", git_commit="abc123")


def _register(client, name: str, logged, bpd: float, fingerprint: str = "fp-a") -> str:
    run_id, info = logged
    version = reg.register_version(client, name, info.model_uri,
                                   _candidate(run_id, bpd, fingerprint), info.model_id)
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


def test_abandoned_pending_version_stops_blocking(client, logged):
    name = "abandoned"
    _register(client, name, logged, 3.0)  # its pipeline "died": never promoted
    v2 = _register(client, name, logged, 2.0)
    start = time.monotonic()
    assert reg.promote(client, name, v2, queue_timeout_s=0.5, poll_s=0.05).promoted
    assert 0.5 <= time.monotonic() - start < 10


def test_gate_without_finite_bpd_never_promotes(client, logged):
    name = "nan"
    v1 = _register(client, name, logged, float("nan"))
    decision = reg.promote(client, name, v1)
    assert not decision.promoted and decision.champion_version is None


def test_the_k_draw_bound_is_tagged_and_listed():
    from types import SimpleNamespace

    from deploy.registry import Candidate, _bpd_at_k

    tags = Candidate(test_bpd=1.9, dataset="digits", manifest_fingerprint="f", run_id="r",
                     bpd_at_k={"test_bpd_k64": 1.85}).tags()
    assert float(tags["test_bpd"]) == 1.9 and float(tags["test_bpd_k64"]) == 1.85
    assert _bpd_at_k(SimpleNamespace(tags=tags)) == {"64": 1.85}
    assert _bpd_at_k(SimpleNamespace(tags={"test_bpd_kx": "1", "test_bpd_k8": "nan?"})) == {}

"""Sweeps that mean something: a trial's learning-rate warmup ends before ASHA first compares
trials. The choice pinned here: such a sweep is REJECTED with the numbers and the
fix, never silently rescaled; `tune.warmup_steps` sets the trials' own warmup."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from train.config import TrainConfig
from tune.config import TuneConfig
from tune.leaderboard import TrialRow, _warmup_steps, as_records, leaderboard_table
from tune.space import SearchSpaceError, check_warmup, trial_train_config

DIGITS_TRAIN = 1258  # images in the digits train split (data_prep's default 70/10/20 split)
REPO = Path(__file__).resolve().parents[2]


def test_warmup_longer_than_the_first_rung_is_rejected_naming_the_numbers():
    base = TrainConfig.model_validate({"batch_size": 32, "optim": {"warmup_steps": 200}})
    tune = TuneConfig(scheduler="asha", grace_period=1, max_t=4)
    with pytest.raises(SearchSpaceError) as err:
        check_warmup(tune, base, DIGITS_TRAIN)
    message = str(err.value)
    assert "200 optimiser steps (train.optim.warmup_steps=200)" in message
    assert "tune.grace_period=1 epoch(s) = 39 steps" in message  # 1258 // 32
    assert "tune.warmup_steps below 39" in message and "tune.grace_period to 6" in message
    assert "tune.warmup_images below 1248" in message  # 39 x 32

    # a warm-up in images counts its steps at the trials' batch
    images = base.model_copy(update={"optim": base.optim.model_copy(
        update={"warmup_steps": None, "warmup_images": 6400})})
    with pytest.raises(SearchSpaceError, match=r"200 optimiser steps \(train.optim.warmup_images"
                       r"=6400\)"):
        check_warmup(tune, images, DIGITS_TRAIN)
    check_warmup(tune.model_copy(update={"warmup_images": 640}), images, DIGITS_TRAIN)

    # fixed by the trials' own warmup, or by a later first rung
    check_warmup(tune.model_copy(update={"warmup_steps": 20}), base, DIGITS_TRAIN)
    check_warmup(tune.model_copy(update={"grace_period": 4, "max_t": 8}),
                 base.model_copy(update={"optim": base.optim.model_copy(
                     update={"warmup_steps": 100})}), DIGITS_TRAIN)


def test_fifo_and_searched_warmups_and_batch_sizes_are_checked_at_their_corners():
    base = TrainConfig.model_validate({"batch_size": 32, "optim": {"warmup_steps": 10}})
    fifo = TuneConfig(scheduler="fifo", max_t=1, space={"optim.warmup_steps": [10, 60]})
    with pytest.raises(SearchSpaceError, match=r"60 optimiser steps \(tune\.space"):
        check_warmup(fifo, base, DIGITS_TRAIN)
    batches = TuneConfig(grace_period=1, space={"batch_size": [32, 512]})
    with pytest.raises(SearchSpaceError, match="batch 512"):  # 2 steps per epoch
        check_warmup(batches, base, DIGITS_TRAIN)


def test_trials_use_tune_warmup_steps_or_images():
    base = TrainConfig.model_validate({"optim": {"warmup_steps": 200}})
    trial = trial_train_config(base, {}, TuneConfig(warmup_steps=20))
    assert (trial.optim.warmup_steps, trial.optim.warmup_images) == (20, None)
    trial = trial_train_config(base, {}, TuneConfig(warmup_images=640))
    assert (trial.optim.warmup_steps, trial.optim.warmup_images) == (None, 640)
    # a searched warm-up in images replaces the train section's steps, and the other way round
    trial = trial_train_config(base, {"optim.warmup_images": 320}, TuneConfig())
    assert (trial.optim.warmup_steps, trial.optim.warmup_images) == (None, 320)
    images = trial_train_config(base, {"optim.warmup_images": 320}, TuneConfig())
    trial = trial_train_config(images, {"optim.warmup_steps": 7}, TuneConfig())
    assert (trial.optim.warmup_steps, trial.optim.warmup_images) == (7, None)
    for given in ({"warmup_steps": 20}, {"warmup_images": 640}):
        with pytest.raises(ValueError, match=r"set one of tune.warmup_steps, tune.warmup_images "
                           r"or a searched warm-up, not tune.warmup_\w+ and tune.space.optim"):
            TuneConfig(**given, space={"optim.warmup_steps": [10, 20]})
    with pytest.raises(ValueError, match="not tune.warmup_steps and tune.warmup_images"):
        TuneConfig(warmup_steps=20, warmup_images=640)


@pytest.mark.parametrize("profile", [None, "cifar10", "celeba"])
def test_shipped_sweeps_warm_up_inside_their_first_rung(profile):
    """The quickstart sweep (and the profiles') pass the check on their datasets' sizes."""
    cfg = load_config(REPO / "pipeline.yaml", profile)
    train_images = {"digits": DIGITS_TRAIN, "cifar10": 45_000, "celeba": 162_770}
    check_warmup(cfg.tune, cfg.train, train_images[cfg.data_prep.dataset])
    trial = trial_train_config(cfg.train, {}, cfg.tune)
    steps = cfg.tune.first_rung_epochs * (train_images[cfg.data_prep.dataset]
                                          // trial.batch_size)
    assert trial.optim.warmup_steps_at(trial.batch_size) < steps


def test_leaderboard_says_which_trials_were_still_warming_up():
    rows = [
        TrialRow("t_1", "r1", "stopped early", {"optim.lr": 1e-3}, 10, [(1, 3.9)], steps=44,
                 warmup_steps=200),
        TrialRow("t_2", "r2", "completed", {"optim.lr": 2e-3}, 10, [(1, 3.8), (2, 3.7)],
                 steps=88, warmup_steps=20),
    ]
    assert rows[0].warming_up and not rows[1].warming_up
    # a child run's params give the warm-up in steps, or in images of the trial's batch
    assert _warmup_steps({"train.optim.warmup_steps": "None", "train.optim.warmup_images":
                          "650", "train.batch_size": "32"}) == 21
    assert _warmup_steps({"train.optim.warmup_steps": "200", "train.batch_size": "32"}) == 200
    records = {r["trial"]: r for r in as_records(rows, "val_bpd", "min")}
    assert records["t_1"]["warmup"] == "44/200" and records["t_2"]["warmup"] == "done"
    table = leaderboard_table(rows, "val_bpd", "min", "sweep")
    assert "warmup" in [column.header for column in table.columns]

"""The command line as a user meets it: start-up time, usage errors, services that are not
there (one clear line, the right exit code, in seconds), and the "next" block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, VENV_BIN, free_port, subprocess_env
from rich.console import Console

from pipeline.cli import main
from pipeline.config import ConfigError, load_config, validate
from pipeline.next_steps import next_steps, tool_command
from pipeline.records import StageRecord, write_record
from pipeline.runner import run_pipeline
from pipeline.stages.base import Stage

HEAVY = ("torch", "ray", "mlflow", "webdataset", "numpy")


@pytest.mark.parametrize("argv", [["--help"], ["config", "show"]])
def test_cli_starts_without_torch_ray_or_mlflow(argv):
    """`nfpipe --help` and `config show` import none of the heavy frameworks (the config
    models are pydantic only; flows and data_prep export lazily)."""
    probe = (
        "import sys, contextlib, io\n"
        "from pipeline.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_help_is_fast():
    """The whole `nfpipe --help` process, timed (0.3 s on an idle 2-core machine; the bound
    leaves room for a loaded one, while torch alone takes longer than it to import)."""
    started = time.perf_counter()
    out = subprocess.run([str(VENV_BIN / "nfpipe"), "--help"], cwd=REPO, env=subprocess_env(),
                         capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    print(f"nfpipe --help: {seconds:.2f} s")
    assert out.returncode == 0 and "usage: nfpipe" in out.stdout
    assert seconds < 2.0


def test_empty_stage_list_is_a_usage_error(capsys):
    """`--stages ''` is exit 2, not "run everything"."""
    assert main(["run", "--stages", ""]) == 2
    assert main(["run", "--stages", " , "]) == 2
    assert "names no stage" in capsys.readouterr().err


def test_a_boolean_is_not_a_number(tmp_path):
    """`--set train.epochs=true` is an error naming the key."""
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer, got a boolean"):
        load_config(None, sets=["train.epochs=true"])
    with pytest.raises(ConfigError, match=r"train\.optim\.lr: expected a number"):
        validate({"train": {"optim": {"lr": False}}})
    with pytest.raises(ConfigError, match=r"train\.optim\.betas: expected a number"):
        validate({"train": {"optim": {"betas": [True, 0.9]}}})
    # booleans where the schema wants them, and YAML's 1e-3 (a string) as a number, still work
    cfg = load_config(None, sets=["ray.dashboard=false", "train.optim.lr=1e-3"])
    assert cfg.ray.dashboard is False and cfg.train.optim.lr == 1e-3


def test_an_empty_pipeline_file_is_an_error_naming_it(tmp_path, capsys):
    """An empty file does not silently run the built-in defaults."""
    empty = tmp_path / "pipeline.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=f"{empty} is empty"):
        load_config(empty)
    assert main(["config", "show", str(empty)]) == 2
    assert f"{empty} is empty" in capsys.readouterr().err


def test_unreachable_ray_dashboard_is_one_line_and_exit_2(capsys):
    """`nfpipe status X --address http://127.0.0.1:PORT` (nothing there)."""
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "raysubmit_X", "--address", address]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"no Ray dashboard answers at {address}" in err and "ray start --head" in err


def test_the_address_given_wins_over_rays_address_variables(capsys, monkeypatch):
    """Ray's job client reads $RAY_API_SERVER_ADDRESS and $RAY_ADDRESS before its argument (an
    embedded Ray earlier in the same process sets the first); --address must still win."""
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    address = f"http://127.0.0.1:{free_port()}"
    assert main(["status", "raysubmit_X", "--address", address]) == 2
    assert f"no Ray dashboard answers at {address}:" in capsys.readouterr().err
    assert os.environ["RAY_ADDRESS"].startswith("127.0.0.1:")  # left as it was


def test_unreachable_tracking_server_fails_in_seconds_before_any_stage(tmp_path):
    """A tracking URI where nothing listens fails before any stage runs (no
    data preparation, no Ray), within seconds."""
    ran: list[str] = []
    graph = {"work": Stage("work", (), lambda ctx: ran.append("work") or {}, lambda c: c.name)}
    cfg = validate({"workdir": str(tmp_path / "work"),
                    "mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}})
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="MLflow tracking server .* is not reachable"):
        run_pipeline(cfg, ["work"], console=Console(quiet=True), graph=graph)
    assert time.monotonic() - started < 10 and ran == []


@pytest.mark.parametrize("argv", [["models", "list"], ["run", "--stages", "train"]])
def test_unreachable_tracking_server_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys,
                                                             argv):
    """From the command line, `models list` and `run` say it in one line."""
    monkeypatch.chdir(tmp_path)
    uri = f"http://127.0.0.1:{free_port()}"
    sets = ["--set", f"mlflow.tracking_uri={uri}"] if argv[0] == "run" else []
    if argv[0] == "models":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.monotonic()
    assert main([*argv, *sets]) == 1
    err = capsys.readouterr().err.strip()
    assert time.monotonic() - started < 10
    assert len(err.splitlines()) == 1 and f"MLflow tracking server {uri} is not reachable" in err
    assert not (tmp_path / ".nfpipe" / "records").exists()


def _record(workdir: Path, stage: str, outputs: dict) -> None:
    write_record(workdir, StageRecord(stage, "ok", "fp", "cfg", {}, outputs))


def test_next_block_says_only_what_this_run_did(tmp_path, monkeypatch):
    """The "next" block says "registered vN" only when this invocation promoted; the MLflow
    UI only once its store exists; samples only when the file is there."""
    monkeypatch.chdir(tmp_path)
    cfg = validate({"workdir": str(tmp_path / "work")})
    workdir = tmp_path / "work"
    assert next_steps(cfg, ran={"data_prep"}) == []  # a data_prep-only run: nothing to show

    _record(workdir, "evaluate", {"test_bpd": 1.9478, "val_bpd": 1.9512, "source": "train"})
    _record(workdir, "promote", {"model_name": "m", "version": 2, "champion_version": 1,
                                 "promoted": False})
    _record(workdir, "deploy", {"sample_grid": str(tmp_path / "gone.png")})
    earlier = dict(next_steps(cfg, ran=set()))
    # the chosen model's test figure, and the val figure it was chosen on
    assert earlier["test bits/dim"] == "1.9478 (k=1; train model chosen on val 1.9512)"
    assert earlier["champion"] == "models:/m@champion (v1)"
    assert "this run" not in earlier and "samples" not in earlier and "MLflow UI" not in earlier

    (tmp_path / "mlflow.db").write_bytes(b"")
    now = dict(next_steps(cfg, ran={"evaluate", "promote"}))
    assert now["this run"] == "registered m v2 (kept the champion)"
    assert now["MLflow UI"].endswith(f"ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db")
    assert now["serve it"].endswith(
        f"deploy serve --tracking-uri sqlite:///{tmp_path}/mlflow.db --model m@champion")


TUNE_OUTPUTS = {"name": "sweep-ab12", "trials": 4, "stopped_early": 2, "parent_run_id": "p123",
                "best_trial_id": "t3", "metric": "val_bpd", "best_value": 2.25, "best_epoch": 5,
                "run_id": "r456"}


def test_tune_ends_with_the_parent_run_the_best_trial_and_how_to_promote_it(tmp_path,
                                                                           monkeypatch):
    """The block after `nfpipe tune conf/pipe.yaml --profile small --set ...`; its
    evaluate+promote command, parsed back as typed, resolves to the same config."""
    import shlex

    from pipeline.cli import build_parser
    from pipeline.cli.args import config_from_args
    from pipeline.next_steps import Invocation, print_block, tune_next_steps

    monkeypatch.chdir(tmp_path)
    pipeline = tmp_path / "conf" / "pipe.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text("profiles:\n  small:\n    train:\n      epochs: 2\n")
    sets = (f"workdir={tmp_path / 'work'}", "tune.num_samples=4")
    cfg = load_config(pipeline, "small", sets)
    assert tune_next_steps(cfg) == []  # no finished sweep: nothing to say
    _record(tmp_path / "work", "tune", TUNE_OUTPUTS)
    lines = dict(tune_next_steps(cfg, Invocation(pipeline, sets)))
    assert lines["sweep"] == "sweep-ab12: 4 trials, 2 stopped early"
    assert lines["parent run"].startswith("p123")
    assert lines["best trial"] == f"t3: {cfg.tune.metric} 2.2500 at epoch 5, run r456"
    command, _, why = lines["evaluate+promote"].partition(" (")
    words = shlex.split(command)
    assert words[words.index("run") - 1].endswith("nfpipe") and "best trial" in why
    args = build_parser().parse_args(words[words.index("run"):])
    assert args.stages == "evaluate,promote"
    assert config_from_args(args) == cfg
    console = Console(record=True, width=1000)
    print_block(console, list(lines.items()))
    printed = console.export_text()
    assert "\nnext\n" in printed and command in printed


def test_a_submitted_jobs_block_for_the_submitting_machine_names_the_server(tmp_path,
                                                                           monkeypatch):
    """`submit --wait`: with a tracking server, the submitter gets commands that reach it
    (parsed back as typed: the same URI, file and profile); a SQLite store on the cluster's
    disk gives no block, nor does a job that registers nothing."""
    import shlex

    from pipeline.cli import build_parser
    from pipeline.config import registered_model_name
    from pipeline.next_steps import Invocation, submitted_next_steps

    monkeypatch.chdir(tmp_path)
    pipeline = tmp_path / "pipe.yaml"
    pipeline.write_text("profiles:\n  small: {}\n")
    server = "http://mlflow.internal:5000"
    cfg = load_config(pipeline, "small", [f"mlflow.tracking_uri={server}"])
    invocation = Invocation(pipeline, (f"mlflow.tracking_uri={server}",))
    lines = dict(submitted_next_steps(cfg, ["data_prep", "train", "evaluate", "promote"],
                                      invocation))
    assert lines["serve it"].endswith(f"--model {registered_model_name(cfg)}@champion")
    for text in lines.values():
        words = shlex.split(text)
        args = build_parser().parse_args(words[words.index("models" if "models" in words
                                                           else "deploy"):])
        assert (args.tracking_uri, args.pipeline.resolve(), args.profile) == (
            server, pipeline, "small")
    assert submitted_next_steps(cfg, ["data_prep", "train"], invocation) == []
    assert submitted_next_steps(load_config(pipeline, "small"), ["promote"], invocation) == []


def test_commands_in_next_match_how_nfpipe_was_started(tmp_path, monkeypatch):
    """On PATH: the bare name; not on PATH: the script beside this Python."""
    monkeypatch.setenv("PATH", f"{VENV_BIN}")
    assert tool_command("mlflow") == "mlflow"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert tool_command("mlflow") == str(Path(sys.executable).parent / "mlflow")


def test_ray_jobs_500_no_available_agent_is_one_line_with_the_fix():
    """A Ray Jobs API answer of 500 "No available agent" (a head whose job agent is not up)."""
    from pipeline.cli.errors import explain

    err = RuntimeError("Request failed with status code 500: No available agent to submit "
                       "job, please try again later..")
    code, line = explain(err)
    assert code == 1 and "\n" not in line and "ray status" in line
    assert json.dumps(line)  # printable as one line


def test_an_mlflow_error_is_its_first_line_and_a_hint(tmp_path, capsys):
    """A registry miss from a real SQLite store: one line, the MLflow message, the hint."""
    assert main(["deploy", "sample", "--model", "nope@champion", "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "s.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nope" in err and "nfpipe models list" in err


def test_epoch_lines_in_a_log_carry_eta_and_feed_nfpipe_status(tmp_path):
    """Off a terminal the train stage prints one line per epoch with elapsed time and ETA
    (from rank 0's progress file); `nfpipe status` reads its numbers back from the job log."""
    from pipeline.progress import EpochProgress
    from pipeline.submit import latest_metrics

    progress_file = tmp_path / "progress.jsonl"
    console = Console(record=True, width=200, force_terminal=False)
    progress = EpochProgress(progress_file, epochs=4, console=console)
    progress.start()
    lines = [{"epoch": 0, "step": 0, "val_bpd": 3.9, "time": 100.0},
             {"epoch": 1, "step": 44, "train_bpd": 3.5, "val_bpd": 3.8, "time": 110.0},
             {"epoch": 2, "step": 88, "train_bpd": 3.1, "val_bpd": 3.7, "time": 120.0}]
    progress_file.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"epo')
    progress.stop()  # the half-written last line waits for its newline
    shown = console.export_text().splitlines()
    assert len(shown) == 3 and "eta ?" in shown[0]
    assert shown[2].startswith("    train epoch 2/4  step 88  train 3.1000 val 3.7000 bpd")
    assert shown[2].endswith("eta 0:20")  # 10 s per epoch since the first line, 2 to go
    assert latest_metrics("\n".join(shown)) == {"epoch": 2.0, "step": 88.0, "train_bpd": 3.1,
                                                "val_bpd": 3.7}


@pytest.mark.parametrize("group, actions", [
    ("deploy", ("sample", "score", "serve")), ("models", ("list",)), ("config", ("show",)),
])
def test_a_command_of_actions_alone_lists_its_actions(group, actions, capsys):
    """`nfpipe deploy` prints deploy's own help (its actions), not the top-level commands."""
    assert main([group]) == 2
    out = capsys.readouterr().out
    assert out.startswith(f"usage: nfpipe {group}")
    assert all(action in out for action in actions) and "submit" not in out


SECRET_URI = "http://user:s3cr3t-pw@127.0.0.1:{port}"


def test_credentials_in_a_tracking_uri_are_never_printed(tmp_path, monkeypatch, capsys):
    """`nfpipe run --set mlflow.tracking_uri=http://user:PW@…` with nothing listening, and the
    same URI through $MLFLOW_TRACKING_URI for `models list`: the host is named, PW is not."""
    monkeypatch.chdir(tmp_path)
    uri = SECRET_URI.format(port=free_port())
    assert main(["run", "--stages", "train", "--set", f"mlflow.tracking_uri={uri}"]) == 1
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "user" not in err
    assert f"MLflow tracking server http://***@{uri.split('@')[1]} is not reachable" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["models", "list"]) == 1
    assert "s3cr3t" not in capsys.readouterr().err
    # echoed by a config error too
    assert main(["config", "show", "--set", f"mlflow.tracking_uri={uri}",
                 "--set", "ray.num_cpus=0"]) == 2
    assert main(["config", "show", "--set", f"mlflow.tracking_uri=[{uri}]"]) == 2
    assert "s3cr3t" not in capsys.readouterr().err
    assert main(["config", "show", "--set", f"mlflow.tracking_uri={uri}"]) == 0
    assert "s3cr3t" not in capsys.readouterr().out


def test_a_failed_stage_masks_urls_in_its_record_message_and_summary(tmp_path, capsys):
    """A stage whose error holds a URL with a password: the record on disk, the summary and
    report_error's line all mask it (report_error as the last resort)."""
    from pipeline.cli import report_error
    from pipeline.runner import StageFailed

    def fail(ctx):
        raise OSError(f"cannot write to {SECRET_URI.format(port=1)}/bucket/key")

    graph = {"work": Stage("work", (), fail, lambda c: c.name)}
    cfg = validate({"workdir": str(tmp_path / "work")})
    console = Console(record=True, width=200, file=open(os.devnull, "w"))  # noqa: SIM115
    with pytest.raises(StageFailed) as failure:
        run_pipeline(cfg, ["work"], console=console, graph=graph)
    assert report_error(failure.value) == 1
    record = (tmp_path / "work" / "records" / "work.json").read_text()
    shown = capsys.readouterr().err + console.export_text() + record
    assert "s3cr3t" not in shown and "http://***@127.0.0.1:1/bucket/key" in shown


def test_log_lines_mask_urls():
    """The log handler's filter masks a URL in a message and in its arguments."""
    import logging

    from pipeline.cli import _mask_credentials

    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "store %s failed",
                               (SECRET_URI.format(port=1),), None)
    assert _mask_credentials(record)
    assert record.getMessage() == "store http://***@127.0.0.1:1 failed"


def test_mask_url_credentials_covers_user_only_and_at_in_password():
    from tracking import mask_url_credentials

    assert mask_url_credentials("https://tok@h/x and s3://b/k") == "https://***@h/x and s3://b/k"
    assert mask_url_credentials("'http://u:p@ss@h:1/x'") == "'http://***@h:1/x'"
    assert mask_url_credentials("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"

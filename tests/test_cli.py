"""hashing.cli and hashing.jobs.runner: the ``hashing`` command, ``--help`` without heavy imports, log
levels, exit codes (our errors: one message and 2; a bug: its traceback), the tracking check for every job."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashing import cli
from hashing.errors import InputError, UserError
from hashing.jobs import runner
from hashing.storage import StorageUnavailableError

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = REPO / "configs" / "test.yaml"
HEAVY = ("torch", "ray", "mlflow")


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def test_help_of_every_job_imports_neither_torch_ray_nor_mlflow(tmp_path: Path) -> None:
    # What makes --help slow is importing these (seconds each); check they are not imported at all,
    # through the hashing command and through pipelines/<job>.py, in a fresh interpreter.
    script = f"""
import contextlib, io, runpy, sys
from hashing.cli import JOBS, main
outputs = {{}}
for job in JOBS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([job, "--help"])
    outputs[job] = out.getvalue()
sys.argv = ["pipelines/train.py", "--help"]
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    runpy.run_path({str(REPO / "pipelines" / "train.py")!r}, run_name="__main__")
outputs["pipelines/train.py"] = out.getvalue()
import json
print(json.dumps({{"outputs": outputs, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["heavy"] == []
    for job in cli.JOBS:
        assert result["outputs"][job].startswith(f"usage: hashing {job}"), job
        assert "--log-level" in result["outputs"][job] and "--config" in result["outputs"][job]
    assert "--num-workers" in result["outputs"]["pipelines/train.py"]


def test_console_script_and_python_m_work_outside_the_repository(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("hashing")
    assert script.is_file(), "no hashing script in the venv: pip install -e . (pyproject [project.scripts])"
    started = time.perf_counter()
    done = _run([str(script), "search", "--help"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--format {text,json}" in done.stdout
    assert time.perf_counter() - started < 60  # loose: the import check above is the real one

    done = _run([sys.executable, "-m", "hashing", "--help"], cwd=tmp_path)
    assert done.returncode == 0 and all(job in done.stdout for job in cli.JOBS), done.stderr
    done = _run([sys.executable, "-m", "hashing", "nosuchjob"], cwd=tmp_path)
    assert done.returncode == 2 and "unknown job 'nosuchjob'" in done.stderr


def test_a_user_error_is_one_message_with_exit_code_2(tmp_path: Path, monkeypatch, caplog) -> None:
    from hashing.jobs import evaluate

    for error in (InputError("dataset.uri: the folder has no dataset.json"),
                  StorageUnavailableError("S3 endpoint http://127.0.0.1:1 did not answer")):
        def fail(config, args, error=error):
            raise error

        monkeypatch.setattr(evaluate, "run_cli", fail)
        caplog.clear()
        assert cli.main(["evaluate", "--config", str(TEST_CONFIG), f"run.root={tmp_path}"]) == 2
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [str(error)]
        assert isinstance(error, UserError)


def test_an_internal_bug_keeps_its_traceback_and_exit_code_1(tmp_path: Path) -> None:
    # A ValueError that is not ours is a bug: not mapped to rc 2, the traceback shows where it is.
    script = f"""
import sys
from hashing import cli
from hashing.jobs import evaluate
def bug(config, args):
    raise ValueError("an internal bug")
evaluate.run_cli = bug
sys.exit(cli.main(["evaluate", "--config", {str(TEST_CONFIG)!r}, "run.root={tmp_path}"]))
"""
    done = _run([sys.executable, "-c", script], cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: an internal bug" in done.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("job", ["train", "encode", "evaluate", "promote", "search"])
def test_every_tracking_job_stops_at_once_when_no_tracking_server_answers(job, tmp_path, caplog) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    extra = ["--key", "query-0000000"] if job == "search" else []
    started = time.perf_counter()
    assert cli.main([job, "--config", str(TEST_CONFIG), f"run.root={tmp_path}", f"tracking.uri={uri}",
                     *extra]) == 2
    assert time.perf_counter() - started < 30
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"no MLflow tracking server answers at {uri}" in errors[0]


def test_log_level_and_verbose_set_our_level_and_keep_library_info_off(monkeypatch) -> None:
    monkeypatch.delenv(runner.LOG_LEVEL_ENV, raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)
    parser = cli.evaluate_parser()

    args = parser.parse_intermixed_args([])
    runner.setup_logging(runner.log_level(args))
    assert root.level == logging.INFO
    assert all(logging.getLogger(n).level == logging.WARNING for n in runner.NOISY_LOGGERS)

    runner.setup_logging(runner.log_level(parser.parse_intermixed_args(["--log-level", "warning"])))
    assert root.level == logging.WARNING

    runner.setup_logging(runner.log_level(parser.parse_intermixed_args(["-v"])))
    assert root.level == logging.DEBUG and logging.getLogger("ray").level == logging.DEBUG
    assert runner.log_level(parser.parse_intermixed_args([])) == "DEBUG"  # inherited (HASHING_LOG_LEVEL)
    for name in runner.NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def test_ingest_reads_the_config_and_overrides_and_its_flags_win(tmp_path: Path, capsys) -> None:
    from hashing.data.schema import load_manifest
    from hashing.jobs.ingest import parse_args

    out = tmp_path / "ds"
    assert cli.main(["ingest", "--config", str(TEST_CONFIG), f"run.root={tmp_path}", f"dataset.uri={out}",
                     "dataset.shard_size=64", "--no-progress"]) == 0
    manifest = load_manifest(str(out))
    assert manifest.name == "builtin-tiny" and max(s.samples for s in manifest.split("train").shards) == 64
    assert "fingerprint" in capsys.readouterr().out

    args = parse_args(["--config", str(TEST_CONFIG), "dataset.shard_size=64", "--shard-size", "8",
                       "ingest.overwrite=true", "--output", str(tmp_path / "x"), "--strict"])
    assert (args.shard_size, args.overwrite, args.strict, args.output) == (8, True, True, str(tmp_path / "x"))
    with pytest.raises(SystemExit) as exc:
        parse_args(["ingest.source=folder", f"dataset.uri={tmp_path / 'y'}"])
    assert exc.value.code == 2 and "ingest.labels: required" in capsys.readouterr().err

"""The command line as an operator meets it: help on every option without torch, global options
on either side of the command, distinct exit codes, and log lines in the configured format."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import stream_vae
from stream_vae import errors
from stream_vae.cli.main import EXIT_CODES, _parser, main
from stream_vae.config import LogSettings, load_settings
from stream_vae.logs import JsonFormatter, TextFormatter, configure_logging

ROOT = Path(__file__).resolve().parents[1]


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command's argv prefix and parser, the top level first."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*prefix, name))
    return found


def test_every_option_of_every_command_has_help() -> None:
    commands = _commands(_parser())
    assert len(commands) == 1 + 13 + 4  # the top level, its commands, the registry's actions
    for argv, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"stream-vae {' '.join(argv)}: {action.dest} has no help"


def test_every_help_works_without_importing_torch() -> None:
    """--help used to take 2.4 s: the package imported torch before parsing."""
    argvs = [list(argv) for argv, _ in _commands(_parser())]
    script = (
        "import sys, contextlib, io\n"
        "from stream_vae.cli.main import main\n"
        f"for argv in {argvs!r}:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([*argv, '--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (argv, e.code)\n"
        "    assert out.getvalue().startswith('usage: stream-vae'), argv\n"
        "    assert 'options:' in out.getvalue(), argv\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'aiokafka', 'river') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_shows_defaults_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = capsys.readouterr().out
    assert "records per micro-batch (default: 2048)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for code in EXIT_CODES:
        assert f"{code:>3}  " in text


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert capsys.readouterr().out == f"stream-vae {meta['project']['version']}\n"
    assert stream_vae.__version__ == meta["project"]["version"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_before_or_after_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """`stream-vae train --config x.toml` failed: "unrecognized arguments"."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[window]\nsize = 1\n")  # refused: proves the file was read
    command = ["generate", "--out", str(tmp_path / "fleet"), "--series", "2", "--steps", "50"]
    opts = ["--config", str(cfg), "-v"]
    argv = [*opts, *command] if where == "before" else [*command, *opts]
    assert main(argv) == 78
    assert capsys.readouterr().err.startswith("error: window.size")
    assert not (tmp_path / "fleet").exists()


def test_exit_codes_are_distinct_and_documented() -> None:
    kinds = {
        errors.UsageError: 2,
        errors.DataError: 65,
        errors.RecordError: 65,
        errors.ShapeError: 65,
        errors.ArtifactError: 66,
        errors.RegistryError: 66,
        errors.KafkaUnavailableError: 75,
        errors.ConfigError: 78,
    }
    for kind, code in kinds.items():
        assert kind.exit_code == code and code in EXIT_CODES, kind
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in readme, f"exit code {code} is not in the README's table"


def test_usage_errors_exit_2(tiny_csv: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--no-such-option"])
    assert exit_.value.code == 2
    model = tmp_path / "absent"
    assert main(["score", "--model", str(model), "--data", str(tiny_csv), "--out",
                 str(tmp_path / "s.csv"), "--batch", "0"]) == 2  # fmt: skip
    assert main(["run", "--model", str(model), "--device", "gpu"]) == 2


def test_replay_takes_data_as_an_option(tiny_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_csv.parent / "unreachable.toml"
    cfg.write_text('[kafka]\nbootstrap_servers = "127.0.0.1:1"\n')
    assert main(["replay", "--data", str(tiny_csv), "--topic", "t", "--config", str(cfg)]) == 75
    assert capsys.readouterr().err.startswith("error: cannot reach Kafka at 127.0.0.1:1")
    with pytest.raises(SystemExit) as exit_:  # the file twice
        main(["replay", str(tiny_csv), "--data", str(tiny_csv), "--topic", "t"])
    assert exit_.value.code == 2


def test_run_takes_device_and_backend_as_score_does() -> None:
    from stream_vae.cli.main import _overrides

    args = _parser().parse_args(["run", "--device", "cpu", "--backend", "onnx"])
    assert _overrides(args) == {"service": {"device": "cpu", "backend": "onnx"}}
    assert _overrides(_parser().parse_args(["run"])) == {}  # the settings decide


@pytest.fixture
def tiny_csv(tmp_path: Path) -> Path:
    f = tmp_path / "d.csv"
    f.write_text("series_id,ts,a\n" + "".join(f"s,{i},{i % 5}\n" for i in range(40)))
    return f


def test_log_settings_from_the_environment() -> None:
    s = load_settings(env={"STREAM_VAE_LOG__LEVEL": "debug", "STREAM_VAE_LOG__FORMAT": "json"})
    assert s.log == LogSettings(level="DEBUG", format="json")
    assert load_settings(env={}).log.level is None  # the command's default


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("stream_vae.x", logging.INFO, __file__, 1, message, (), None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_context_as_fields_and_escape_input() -> None:
    sid = 'm-1"}\n{"level":"ERROR'  # a hostile series id
    line = JsonFormatter().format(
        _record(f"alert open {sid}", series=sid, partition=3, model_version="v-1")
    )
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "INFO" and obj["logger"] == "stream_vae.x"
    assert obj["series"] == sid and obj["partition"] == 3 and obj["model_version"] == "v-1"
    assert obj["message"] == f"alert open {sid}" and "offset" not in obj


def test_text_lines_escape_control_characters() -> None:
    line = TextFormatter().format(_record("series m-1\nERROR forged\x1b[31m"))
    assert "\n" not in line and "m-1\\nERROR forged\\x1b[31m" in line


def test_configure_logging_levels_and_replaces_only_its_own_handler() -> None:
    stream = io.StringIO()
    mine = logging.StreamHandler(stream)
    logging.getLogger().addHandler(mine)  # a test runner's, say
    configure_logging(LogSettings(format="json"), default_level="INFO")
    configure_logging(LogSettings(level="WARNING"), default_level="INFO")
    root = logging.getLogger()
    ours = [h for h in root.handlers if h.get_name() == "stream_vae"]
    assert len(ours) == 1 and isinstance(ours[0].formatter, TextFormatter)
    assert mine in root.handlers and root.level == logging.WARNING
    configure_logging(LogSettings(), default_level="INFO")
    assert root.level == logging.INFO


def test_run_logs_lifecycle_at_info_as_json_and_exits_75_without_kafka(tiny: object) -> None:
    """The entrypoint is `stream-vae run`: it used to run at WARNING and say nothing."""
    model = tiny.model_dir  # type: ignore[attr-defined]
    env = {
        "STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "STREAM_VAE_SERVICE__METRICS_PORT": "0",
        "STREAM_VAE_LOG__FORMAT": "json",
        "PATH": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "stream_vae", "run", "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 75, done.stderr
    lines = [json.loads(x) for x in done.stderr.splitlines()]  # every line is JSON
    messages = [x["message"] for x in lines if x["logger"].startswith("stream_vae")]
    assert any(m.startswith("metrics on http://127.0.0.1:") for m in messages), messages
    assert lines[-1]["level"] == "ERROR" and lines[-1]["exit_code"] == 75
    assert lines[-1]["message"].startswith("cannot reach Kafka at 127.0.0.1:1")


def test_route_without_a_receiver_is_a_config_error_and_its_options_set_the_urls(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["route"]) == 78
    assert "no receiver" in capsys.readouterr().err
    from stream_vae.cli.main import _overrides

    args = _parser().parse_args(["route", "--alertmanager", "http://am:9093"])
    assert _overrides(args) == {"route": {"alertmanager_url": "http://am:9093"}}


def test_the_service_backend_is_auto_and_picks_ort_on_the_cpu_where_installed(
    tiny: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    from stream_vae.config import ServiceSettings
    from stream_vae.model.backends import OrtBackend, TorchBackend
    from stream_vae.runtime.live import DetectorOptions, build_detector, resolve_backend

    art = tiny.artifact
    auto = DetectorOptions.from_settings(ServiceSettings(device="cpu"))
    assert auto.backend == "auto"
    assert resolve_backend(art, auto)[0] == "onnx"  # the dev extras have onnxruntime
    with caplog.at_level(logging.INFO, logger="stream_vae.runtime.live"):
        assert isinstance(build_detector(art, auto).backend, OrtBackend)
    assert f"forward pass of {art.version}: onnx" in caplog.text
    for changed in ({"precision": "bf16"}, {"device": "cuda"}, {"backend": "torch"}):
        options = DetectorOptions(**{"device": "cpu", "backend": "auto", **changed})  # type: ignore[arg-type]
        assert resolve_backend(art, options)[0] == "torch", changed
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a)
    )
    assert resolve_backend(art, auto) == (
        "torch", "eager PyTorch on the CPU (pip install 'stream-vae[onnx]' for ORT)"
    )  # fmt: skip
    assert isinstance(build_detector(art, auto).backend, TorchBackend)

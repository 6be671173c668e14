from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stream_vae.cli.main import main
from stream_vae.config import _env, load_settings
from stream_vae.errors import ConfigError


def test_defaults_are_frozen() -> None:
    s = load_settings(env={})
    assert s.window.size == 32
    with pytest.raises(Exception, match="frozen"):
        s.window.size = 4  # type: ignore[misc]


def test_env_nesting_and_types() -> None:
    s = load_settings(
        env={
            "STREAM_VAE_WINDOW__SIZE": "48",
            "STREAM_VAE_SCORING__ALPHA": "0.25",
            "STREAM_VAE_TRAIN__EPOCHS": "3",
            "OTHER": "x",
        }
    )
    assert (s.window.size, s.scoring.alpha, s.train.epochs) == (48, 0.25, 3)


def test_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_VAE_MODEL__HIDDEN", "12")
    assert load_settings().model.hidden == 12


def test_toml_file_below_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[window]\nsize = 20\nstride = 2\n[scoring]\nalpha = "auto"\n')
    s = load_settings(f)
    assert (s.window.size, s.window.stride, s.scoring.alpha) == (20, 2, "auto")
    monkeypatch.setenv("STREAM_VAE_WINDOW__SIZE", "24")
    assert load_settings(f).window.size == 24


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"STREAM_VAE_WINDOW__SIZE": "0"},
            "window.size: Input should be greater than or equal to 2",
        ),
        ({"STREAM_VAE_SCORING__ALPHA": "1.5"}, "alpha must be in [0, 1]"),
        ({"STREAM_VAE_SCORING__TARGET_FPR": "0"}, "scoring.target_fpr"),
        ({"STREAM_VAE_TRAIN__LR": "fast"}, "train.lr"),
        (
            {"STREAM_VAE_KAFKA": "x", "STREAM_VAE_KAFKA__GROUP_ID": "g"},
            "STREAM_VAE_KAFKA__GROUP_ID: STREAM_VAE_KAFKA sets that section to one value",
        ),
        ({"STREAM_VAE_KAFKA": '{"group_id": '}, "STREAM_VAE_KAFKA: not valid JSON"),
    ],
)
def test_bad_values_give_one_readable_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    msg = str(info.value)
    assert fragment in msg
    assert "\n" not in msg


def test_missing_and_malformed_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[window\nsize=")
    with pytest.raises(ConfigError):
        load_settings(bad)


@pytest.mark.parametrize(
    ("env", "where"),
    [
        ({"STREAM_VAE_WINDOW__IDLE_TTL_S": "60"}, "service.idle_ttl_s"),
        ({"STREAM_VAE_WINDOW__MAX_SERIES": "9"}, "service.max_series"),
        ({"STREAM_VAE_SCORING__COOLDOWN": "5"}, "alerts.cooldown"),
        ({"STREAM_VAE_SCORING__NOVELTY_CENSOR": "0.4"}, "evaluation.novelty_censor"),
    ],
)
def test_a_moved_setting_says_where_it_went(env: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env=env)
    env_name = "STREAM_VAE_" + where.upper().replace(".", "__")
    assert f"moved to {where} ({env_name})" in str(err.value)
    section, key = where.split(".")
    value = next(iter(env.values()))
    moved = load_settings(env={env_name: value})  # and the new key takes the value
    assert float(getattr(getattr(moved, section), key)) == float(value)


def test_the_series_held_are_bounded_by_default() -> None:
    """Issue 16: unbounded by default, 200k one-record series grew the process by 240 MiB."""
    s = load_settings(env={}).service
    assert s.idle_ttl_s is not None and s.max_series is not None
    off = load_settings(env={}, service={"idle_ttl_s": None, "max_series": None}).service
    assert off.idle_ttl_s is None and off.max_series is None  # still possible, on purpose


def test_an_unknown_file_key_is_an_error_naming_the_likely_one(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[windows]\nsize = 8\n[scoring]\ntarget_fp = 0.01\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert str(err.value) == (
        "scoring.target_fp: Extra inputs are not permitted (did you mean scoring.target_fpr?); "
        "windows: Extra inputs are not permitted (did you mean window?)"
    )


def test_an_unknown_environment_key_is_warned_once_naming_the_likely_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue "Reliability": STREAM_VAE_WINDOWS__SIZE=8 was silently ignored."""
    monkeypatch.setattr(_env, "_warned", set())
    env = {
        "STREAM_VAE_WINDOWS__SIZE": "8",  # a section misspelt
        "STREAM_VAE_WINDOW__SIZ": "8",  # a key misspelt
        "STREAM_VAE_WINDOW__SIZE__MAX": "8",  # below a leaf
        "STREAM_VAE_ZZZ": "1",  # like nothing
        "STREAM_VAE_WINDOW__STRIDE": "2",  # known keys still apply
    }
    caplog.set_level(logging.WARNING)
    first = load_settings(env=env)
    monkeypatch.setenv("STREAM_VAE_WINDOWS__SIZE", "8")  # the process environment, too
    load_settings(env=env)
    load_settings()
    assert (first.window.size, first.window.stride) == (32, 2)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w for w in warned if any(f"key {k} " in w for k in env)] == [
        "environment key STREAM_VAE_WINDOWS__SIZE is not a setting, ignored; "
        "did you mean STREAM_VAE_WINDOW__SIZE?",
        "environment key STREAM_VAE_WINDOW__SIZ is not a setting, ignored; "
        "did you mean STREAM_VAE_WINDOW__SIZE?",
        "environment key STREAM_VAE_WINDOW__SIZE__MAX is not a setting, ignored; "
        "did you mean STREAM_VAE_WINDOW__SIZE?",
        "environment key STREAM_VAE_ZZZ is not a setting, ignored",
    ]  # once each, though three loads saw them


def test_overrides_replace_environment_keys_not_sections() -> None:
    s = load_settings(
        env={"STREAM_VAE_SERVICE__DEVICE": "cpu", "STREAM_VAE_SERVICE__MAX_WAIT_MS": "5"},
        service={"max_wait_ms": 20},
    )
    assert (s.service.device, s.service.max_wait_ms) == ("cpu", 20)


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("KAFKA__INPUT_PATTERN", "([", "kafka.input_pattern: Value error, not a regular expr"),
        ("KAFKA__INPUT_TOPICS", '["telemetry", "a b"]', "kafka.input_topics.1: Value error"),
        ("KAFKA__INPUT_TOPICS", '[""]', "kafka.input_topics.0: Value error"),
        ("KAFKA__ALERT_TOPIC", "alerts/eu", "kafka.alert_topic: Value error"),
        ("KAFKA__DEAD_LETTER_TOPIC", "..", "kafka.dead_letter_topic: Value error"),
        ("KAFKA__MODEL_EVENTS_TOPIC", ".", "kafka.model_events_topic: Value error"),
        ("KAFKA__STATE_TOPIC", "x" * 250, "kafka.state_topic: Value error"),
        ("KAFKA__ALERT_TOPIC", "tëlemetry", "kafka.alert_topic: Value error"),
        ("SERVICE__MAX_WAIT_MS", "0", "service.max_wait_ms: Input should be greater than or"),
    ],
)
def test_kafka_names_and_the_idle_wait_are_checked_at_load(
    key: str, value: str, fragment: str
) -> None:
    """Issue "Reliability": these passed the settings and failed later, in `run`: a bad pattern
    crashed it, a bad topic name logged an error every 100 ms, max_wait_ms=0 spun a core."""
    with pytest.raises(ConfigError) as err:
        load_settings(env={f"STREAM_VAE_{key}": value})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_bad_setting_is_one_line_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAM_VAE_KAFKA__INPUT_PATTERN", "([")
    assert main(["registry", "list"]) == 78
    err = capsys.readouterr().err
    assert err.startswith("error: kafka.input_pattern: ") and err.count("\n") == 1


def test_topic_names_kafka_accepts_pass() -> None:
    names = ("a", "x" * 249, "...", "Tele_metry-2.eu")
    k = load_settings(env={}, kafka={"input_topics": names, "alert_topic": names[1]}).kafka
    assert k.input_topics == names and k.alert_topic == names[1]
    assert load_settings(env={}, kafka={"input_pattern": r"telemetry\..*"}).kafka.input_pattern


SECRET = "987654321"


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        (f"sasl_password = {SECRET}", "kafka.sasl_password: Input should be a valid string"),
        (f"ssl_password = [{SECRET}]", "kafka.ssl_password: Input should be a valid string"),
        # a misspelt secret key is still a secret
        (f'sasl_pasword = "{SECRET}"', "(did you mean kafka.sasl_password?)"),
    ],
)
def test_a_secret_is_never_echoed(
    toml: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue "Reliability": a non-string kafka.sasl_password was echoed in the error line."""
    f = tmp_path / "c.toml"
    f.write_text(f"[kafka]\n{toml}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f, env={})
    assert fragment in str(err.value) and SECRET not in str(err.value)
    key, value = (part.strip() for part in toml.split("="))
    with pytest.raises(ConfigError) as err:  # the section as JSON in one environment key
        load_settings(env={"STREAM_VAE_KAFKA": f'{{"{key}": {value}}}'})
    assert fragment in str(err.value) and SECRET not in str(err.value)
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(f), "registry", "list"]) == 78
    out, err_text = capsys.readouterr()
    assert err_text.startswith("error: kafka.") and SECRET not in out + err_text


def test_values_of_plain_settings_are_still_echoed() -> None:
    with pytest.raises(ConfigError, match=r"kafka.topic_partitions: .* \(got 'many'\)"):
        load_settings(env={"STREAM_VAE_KAFKA__TOPIC_PARTITIONS": "many"})

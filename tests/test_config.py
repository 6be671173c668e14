from __future__ import annotations

from pathlib import Path

import pytest

from stream_vae.config import load_settings
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
        ({"STREAM_VAE_SCORING__TYPO": "1"}, "scoring.typo: Extra inputs are not permitted"),
        ({"STREAM_VAE_TRAIN__LR": "fast"}, "train.lr"),
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

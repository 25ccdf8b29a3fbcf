"""Configuration precedence: defaults < YAML file < TRUSTYARD_* variables < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.config import ConfigError, load_config
from shared.durations import DurationError, parse_duration


def test_defaults_are_the_embedded_ones():
    config = load_config(environ={})
    assert (config.host, config.port) == ("127.0.0.1", 5000)
    assert config.data_dir == Path("./trustyard-data")
    assert config.delete_enabled is True
    assert config.gc_grace_period == 3600


def test_file_then_environment_then_flags(tmp_path):
    path = tmp_path / "trustyard.yaml"
    path.write_text(
        "listen: 0.0.0.0:6000\ndata_dir: /srv/file\ngc: {grace_period: 2h}\n"
        "storage: {delete_enabled: false}\n"
    )
    from_file = load_config(path, environ={})
    assert (from_file.host, from_file.port) == ("0.0.0.0", 6000)
    assert from_file.gc_grace_period == 7200
    assert from_file.delete_enabled is False

    env = {
        "TRUSTYARD_DATA_DIR": "/srv/env",
        "TRUSTYARD_GC__GRACE_PERIOD": "30m",
        "TRUSTYARD_STORAGE__DELETE_ENABLED": "true",
        "OTHER": "x",
    }
    from_env = load_config(path, environ=env)
    assert from_env.data_dir == Path("/srv/env")
    assert from_env.gc_grace_period == 1800
    assert from_env.delete_enabled is True
    assert from_env.port == 6000

    flagged = load_config(path, environ=env, overrides={"data_dir": "/srv/flag", "listen": None})
    assert flagged.data_dir == Path("/srv/flag")
    assert flagged.port == 6000


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("log_level: loud\ngc: {grace_period: soon, extra: 1}\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path, environ={})
    message = str(failure.value)
    assert "log_level" in message
    assert "gc.grace_period" in message
    assert "extra" in message


@pytest.mark.parametrize("text", ["", "1h1", "-5s", "5 years"])
def test_bad_durations(text):
    with pytest.raises(DurationError):
        parse_duration(text)


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration(2.5) == 2.5


def test_bad_listen_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(environ={}, overrides={"listen": "nowhere"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", environ={})


def test_prefixed_variables_that_name_no_setting_are_not_ours():
    # Kubernetes injects these for a Service called trustyard; test switches share the prefix.
    config = load_config(
        environ={
            "TRUSTYARD_PORT": "tcp://10.0.0.1:5000",
            "TRUSTYARD_SERVICE_HOST": "10.0.0.1",
            "TRUSTYARD_PORT_5000_TCP_ADDR": "10.0.0.1",
            "TRUSTYARD_REQUIRE_E2E": "1",
            "TRUSTYARD_LISTEN": "127.0.0.1:5001",
        }
    )
    assert (config.host, config.port) == ("127.0.0.1", 5001)


def test_a_near_miss_of_a_setting_name_is_refused_with_the_name():
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TRUSTYARD_LSTEN": "127.0.0.1:5001"})
    assert str(caught.value) == "TRUSTYARD_LSTEN: not a setting; did you mean TRUSTYARD_LISTEN?"
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"TRUSTYARD_GC__GRACE_PERIDO": "2h"})
    assert (
        "TRUSTYARD_GC__GRACE_PERIDO: gc.grace_perido: unknown key; did you mean grace_period?"
        in (str(caught.value))
    )

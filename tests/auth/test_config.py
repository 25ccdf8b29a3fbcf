"""The `auth` and `tls` configuration sections, and serving over TLS."""

from __future__ import annotations

import ssl

import pytest

from registry.cli import main, tls_context
from registry.config import ConfigError, load_config
from tests.auth.tls import self_signed


def test_no_auth_section_means_an_open_registry(tmp_path):
    config = load_config(environ={}, overrides={"data_dir": str(tmp_path)})
    assert not config.auth_enabled
    assert config.tls_cert is None


def test_auth_section_turns_auth_on_unless_disabled(tmp_path):
    on = load_config(environ={}, overrides={"auth": {"permissions": []}})
    assert on.auth_enabled
    off = load_config(environ={}, overrides={"auth": {"enabled": False}})
    assert not off.auth_enabled


@pytest.mark.parametrize(
    "auth",
    [
        {"permissions": [{"namespace": "a", "users": {"alice": "fly"}}]},
        {"permissions": [{"namespace": "a", "anonymous": "push"}]},
        {"permissions": [{"users": {"alice": "pull"}}]},
        {"token": {"ttl": "soon"}},
        {"realm": "ftp://x/token"},
        {"unknown": 1},
    ],
)
def test_invalid_auth_sections_are_refused(auth):
    with pytest.raises(ConfigError):
        load_config(environ={}, overrides={"auth": auth})


def test_tls_needs_both_files(tmp_path, capsys):
    with pytest.raises(ConfigError):
        load_config(environ={}, overrides={"tls": {"cert": "c.pem"}})
    assert main(["serve", "--tls-cert", "c.pem", "--data-dir", str(tmp_path)]) == 2


def test_tls_context_loads_the_certificate(tmp_path):
    cert, key = self_signed(tmp_path / "certs")
    config = load_config(environ={}, overrides={"tls": {"cert": str(cert), "key": str(key)}})
    context = tls_context(config)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2

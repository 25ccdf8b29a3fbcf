"""The `upstreams` and `proxy` settings: every problem named with its upstream, names routed by
configuration alone, passwords kept out of logs."""

from __future__ import annotations

import pytest

from registry.config import ConfigError, load_config


def load(tmp_path, environ=None, **overrides):
    return load_config(
        environ=environ or {}, overrides={"data_dir": str(tmp_path / "d"), **overrides}
    )


def test_valid_settings_route_prefixes_and_the_default_upstream(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    config = load(
        tmp_path,
        environ={"GHCR_TOKEN": "from-the-environment"},
        upstreams=[
            {
                "name": "hub",
                "url": "https://registry-1.docker.io",
                "prefix": "docker.io",
                "username": "me",
                "password_file": str(secret),
            },
            {
                "name": "ghcr",
                "url": "https://ghcr.io/",
                "prefix": "ghcr.io",
                "username": "me",
                "password_env": "GHCR_TOKEN",
                "read_timeout": "2m",
            },
        ],
        proxy={
            "default_upstream": "hub",
            "local_namespaces": ["team/**"],
            "manifest_ttl": "10m",
            "stale_if_error": "2d",
        },
    )
    proxy = config.proxy
    assert proxy is not None
    hub, ghcr = proxy.upstreams
    assert hub.password == "from-a-file" and ghcr.password == "from-the-environment"
    assert ghcr.url == "https://ghcr.io" and ghcr.read_timeout == 120.0
    assert (proxy.manifest_ttl, proxy.stale_if_error) == (600.0, 172800.0)
    assert proxy.route("docker.io/library/python") == (hub, "library/python")
    assert proxy.route("ghcr.io/org/tool") == (ghcr, "org/tool")
    assert hub.remote_name("python") == "library/python"  # Docker Hub's one-segment names
    assert ghcr.remote_name("tool") == "tool"
    # Unprefixed: the default upstream, except the local namespaces.
    assert proxy.route("library/alpine") == (hub, "library/alpine")
    assert proxy.route("team/app") is None
    assert "from-a-file" not in repr(proxy) and "from-the-environment" not in repr(proxy)


def test_without_upstreams_there_is_no_proxy(tmp_path):
    assert load(tmp_path).proxy is None


def test_every_problem_is_named_with_its_upstream(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(
            tmp_path,
            upstreams=[
                {"name": "a", "url": "https://a.example", "prefix": "a.io", "password": "x"},
                {
                    "name": "a",
                    "url": "https://b.example",
                    "prefix": "a.io/sub",
                    "username": "u",
                    "password": "p",
                    "password_env": "P",
                },
                {
                    "name": "c",
                    "url": "https://c.example",
                    "prefix": "c.io",
                    "username": "u",
                    "password_env": "UNSET_VARIABLE",
                    "ca_file": str(tmp_path / "missing.pem"),
                },
            ],
            proxy={"default_upstream": "hubb"},
        )
    message = str(raised.value)
    assert "upstreams[0] (a): a password needs a username" in message
    assert "upstreams[1] (a): give one of password, password_env, not several" in message
    assert "upstreams[2] (c): password_env: the variable UNSET_VARIABLE is not set" in message
    assert "upstreams[2] (c): ca_file" in message and "not a readable PEM file" in message
    assert "the name 'a' is used twice" in message
    assert "the prefixes of a (a.io) and a (a.io/sub) overlap" in message
    assert "proxy.default_upstream: no upstream named 'hubb' (upstreams: a, c)" in message


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        (
            {"url": "ftp://x.io", "prefix": "x.io"},
            "upstreams[0].url: expected the upstream's base URL",
        ),
        ({"url": "https://x.io/v2/", "prefix": "x.io"}, "upstreams[0].url: expected"),
        (
            {"url": "https://x.io", "prefix": "X.io"},
            "upstreams[0].prefix: expected a repository path",
        ),
        (
            {"url": "https://x.io", "prefix": "x.io", "read_timout": "1s"},
            "did you mean read_timeout?",
        ),
        ({"url": "https://x.io"}, "missing required key prefix"),
    ],
)
def test_schema_problems_say_what_was_expected(tmp_path, item, expected):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, upstreams=[{"name": "x", **item}])
    assert expected in str(raised.value)


def test_a_proxy_section_without_upstreams_is_refused(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load(tmp_path, proxy={"manifest_ttl": "1m"})
    assert "proxy: set, but no upstreams are configured" in str(raised.value)


def test_relative_ca_and_password_files_are_read_from_the_config_files_folder(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "pw").write_text("secret")
    (folder / "trustyard.yaml").write_text(
        "upstreams:\n"
        "  - name: q\n    url: https://quay.io\n    prefix: quay.io\n"
        "    username: u\n    password_file: pw\n"
    )
    config = load_config(folder / "trustyard.yaml", environ={})
    assert config.proxy is not None and config.proxy.upstreams[0].password == "secret"

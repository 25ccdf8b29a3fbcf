"""The token realm in challenges comes from configuration, never from what a client sends.

An attacker who can make a client send `Host: evil.example` (a proxy, a DNS entry, a link) must
not get the registry to tell that client to fetch its token, with its password, from
evil.example.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from registry.app import create_app
from tests.auth.conftest import auth_section, write_accounts
from tests.auth.test_api import challenge_params
from tests.conftest import make_config

EVIL = {"Host": "evil.example"}


async def _realm(client, headers=None) -> str:
    resp = await client.get("/v2/", headers=headers or {})
    assert resp.status == 401
    return challenge_params(resp.headers["WWW-Authenticate"])["realm"]


async def test_public_url_makes_the_realm_whatever_the_host_header(start_client, data_dir):
    write_accounts(data_dir)
    client = await start_client(
        listen="0.0.0.0:5000", public_url="https://registry.example.com/", auth=auth_section()
    )
    assert await _realm(client, EVIL) == "https://registry.example.com/token"
    assert await _realm(client) == "https://registry.example.com/token"


async def test_auth_realm_wins_over_public_url(start_client, data_dir):
    write_accounts(data_dir)
    client = await start_client(
        listen="0.0.0.0:5000",
        public_url="https://registry.example.com",
        auth=auth_section(realm="https://login.example.com/token"),
    )
    assert await _realm(client, EVIL) == "https://login.example.com/token"


async def test_beyond_loopback_without_configuration_the_realm_is_the_address_connected_to(
    start_client, data_dir
):
    write_accounts(data_dir)
    client = await start_client(listen="0.0.0.0:5000", auth=auth_section())
    realm = await _realm(client, EVIL)
    assert "evil.example" not in realm
    assert realm == f"http://127.0.0.1:{client.port}/token"


async def test_on_loopback_the_host_header_names_the_realm(start_client, data_dir):
    write_accounts(data_dir)
    # Every client of a loopback-only server is on this machine: the name it used is the one
    # that reaches the server (localhost, 127.0.0.1, [::1]).
    client = await start_client(auth=auth_section())
    assert await _realm(client, {"Host": f"localhost:{client.port}"}) == (
        f"http://localhost:{client.port}/token"
    )
    # Even there a Host header that would break out of the quoted realm is not used.
    realm = await _realm(client, {"Host": 'evil.example",service="x'})
    assert realm == f"http://127.0.0.1:{client.port}/token"


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (False, "OPEN REGISTRY"),
        (True, "without public_url or auth.realm"),
    ],
)
def test_start_up_warns_when_listening_beyond_loopback(tmp_path, auth, expected):
    config = tmp_path / "trustyard.yaml"
    config.write_text("auth: {permissions: []}\n" if auth else "{}\n")
    # Port 0: the system chooses a free one as the server binds (no port picked, freed, and
    # perhaps taken by another test before the server binds it); the warning names that port.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "registry",
            "serve",
            "--config",
            str(config),
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "Trustyard listening on" in line:
                break
        text = "".join(seen)
        assert expected in text, text
        assert "WARNING" in text
        bound = re.search(r"Trustyard listening on http://0\.0\.0\.0:(\d+)", text)
        assert bound is not None and int(bound.group(1)) > 0, text
        assert f"listening on 0.0.0.0:{bound.group(1)} beyond this machine" in text, text
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_beyond_loopback_an_ipv6_address_connected_to_names_the_realm(
    aiohttp_client, data_dir
):
    """An IPv6 socket address has four parts: the address and port are still the realm's."""
    write_accounts(data_dir)
    app = create_app(make_config(data_dir, listen="0.0.0.0:5000", auth=auth_section()))
    client = await aiohttp_client(app, server_kwargs={"host": "::1"})
    realm = await _realm(client, EVIL)
    assert realm == f"http://[::1]:{client.port}/token"

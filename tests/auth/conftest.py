"""A registry with authentication on: users, a robot, groups and namespace rules."""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from argon2 import PasswordHasher

from registry.auth.users import UserStore

PASSWORDS = {"alice": "alice-secret-pw", "olga": "olga-secret-pw", "bob": "bob-secret-pw"}

#: alice (dev) pushes team-a and a; pulls b and the library. olga (ops) administers everything.
#: bob belongs to no group. The robot `ci` (group ci) pushes ci/**. Anonymous pulls library/**.
PERMISSIONS: list[dict[str, Any]] = [
    {"namespace": "library/**", "anonymous": "pull", "authenticated": "pull"},
    {"namespace": "team-a/**", "groups": {"dev": "push"}},
    {"namespace": ["a", "b"], "users": {"alice": "pull"}},
    {"namespace": "a", "users": {"alice": "push"}},
    {"namespace": "ci/**", "groups": {"ci": "push"}},
    {"namespace": "**", "groups": {"ops": "admin"}},
]


def auth_section(**extra: Any) -> dict[str, Any]:
    """The `auth` configuration the tests run with."""
    return {"service": "trustyard-test", "permissions": PERMISSIONS, **extra}


def basic(user: str, secret: str) -> str:
    """An `Authorization: Basic` value."""
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def bearer(token: str) -> str:
    """An `Authorization: Bearer` value."""
    return "Bearer " + token


@dataclass
class Accounts:
    """The accounts written into the users file before the registry starts."""

    store: UserStore
    robot_token: str


#: The users file `write_accounts` writes and its robot's token, made once per test process.
_WRITTEN: tuple[bytes, str] | None = None

#: The tests' users are hashed with Argon2id at the smallest cost argon2 allows. The registry
#: verifies a hash with the parameters the hash names (as for a file written by another tool),
#: so every Basic login of a test costs microseconds instead of about 0.2 s of CPU at the
#: library's defaults, which `trustyard user add` keeps using (`test_accounts.py` asserts them).
_CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def add_test_user(store: UserStore, name: str, password: str, groups: list[str]) -> None:
    """Add (or replace) user `name` with a cheap Argon2id hash of `password` (see above)."""
    document = yaml.safe_load(store.path.read_text()) if store.path.exists() else None
    document = document or {}
    users = document.setdefault("users", {}) or {}
    document["users"] = users
    users[name] = {"password": _CHEAP_HASHER.hash(password), "groups": sorted(groups)}
    store._write(document)


def write_accounts(data_dir: Path) -> Accounts:
    """Create alice (dev), olga (ops), bob (no group) and the robot `ci` in the users file: a
    copy of the file written once for this process, the test's own to change."""
    global _WRITTEN
    if _WRITTEN is None:
        with tempfile.TemporaryDirectory() as scratch:
            store = UserStore(Path(scratch) / "users.yaml")
            add_test_user(store, "alice", PASSWORDS["alice"], ["dev"])
            add_test_user(store, "olga", PASSWORDS["olga"], ["ops"])
            add_test_user(store, "bob", PASSWORDS["bob"], [])
            token = store.add_robot("ci", ["ci"], replace=False)
            _WRITTEN = (store.path.read_bytes(), token)
    content, token = _WRITTEN
    path = data_dir / "auth" / "users.yaml"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.touch(mode=0o600)
    path.write_bytes(content)
    return Accounts(UserStore(path), token)


def set_groups(store: UserStore, name: str, groups: list[str]) -> None:
    """Edit `name`'s groups in the users file by hand, keeping its password hash or robot token:
    a change of role, not of credential (`user add --replace` hashes the password anew, which
    ends every token of the account outright)."""
    document = yaml.safe_load(store.path.read_text())
    section = "users" if name in (document.get("users") or {}) else "robots"
    document[section][name]["groups"] = sorted(groups)
    store._write(document)


class As:
    """A test client that sends one `Authorization` header with every request."""

    def __init__(self, client: TestClient, authorization: str) -> None:
        self.client = client
        self.authorization = authorization

    async def request(self, method: str, path: str, **kwargs: Any) -> ClientResponse:
        headers = {**kwargs.pop("headers", {}), "Authorization": self.authorization}
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("GET", path, **kwargs)

    async def head(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("HEAD", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("POST", path, **kwargs)

    async def put(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PUT", path, **kwargs)

    async def patch(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("PATCH", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> ClientResponse:
        return await self.request("DELETE", path, **kwargs)


@pytest.fixture
def accounts(data_dir: Path) -> Accounts:
    return write_accounts(data_dir)


@pytest.fixture
async def auth_client(start_client, accounts) -> TestClient:
    """A fresh registry with auth on (the accounts above, the rules above)."""
    return await start_client(auth=auth_section())


async def fetch_token(
    client: TestClient,
    *scopes: str,
    user: str | None = None,
    secret: str | None = None,
    service: str = "trustyard-test",
) -> str:
    """A token from `GET /token` for `scopes` (anonymous without `user`)."""
    headers = {}
    if user is not None:
        headers["Authorization"] = basic(user, secret if secret is not None else PASSWORDS[user])
    params = [("service", service), *(("scope", scope) for scope in scopes)]
    resp = await client.get("/token", params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token"] == body["access_token"]
    return str(body["token"])

"""The users file: people with passwords, robots with tokens, and the groups of each.

```yaml
users:
  alice: {password: "$argon2id$v=19$m=65536,t=3,p=4$...", groups: [ops]}
robots:
  ci-builder: {token_sha256: "9f86d0...", groups: [ci]}
```

Passwords are hashed with Argon2id (memory-hard: guessing a leaked file is expensive). Robot
tokens are 256 random bits shown once by `trustyard robot add`; a secret that strong cannot be
guessed, so its SHA-256 is enough and keeps robot logins cheap. Users and robots share one name
space. The file is written atomically with mode 0600 and re-read when it changes, so
`trustyard user add` takes effect on a running server.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from registry.identity import Identity

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ROBOT_TOKEN_PREFIX = "tyr_"

_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the user is unknown, so that case costs as much as a wrong password.

    Made on first use, not at import: an Argon2 hash briefly takes its full memory cost.
    """
    return _HASHER.hash(secrets.token_urlsafe(16))


class UsersFileError(ValueError):
    """The users file cannot be read or a name is refused; the message says why."""


class PasswordRefused(ValueError):
    """A new password is refused; the message says why (said once, nothing is changed)."""


#: The shortest password `trustyard user add` accepts (NIST SP 800-63B's minimum).
MIN_PASSWORD_LENGTH = 8
#: Longer passwords are refused: Argon2 would hash them, but nobody types 1,000 characters.
MAX_PASSWORD_LENGTH = 1024


def check_password(password: str) -> str:
    """`password` when it may be set; `PasswordRefused` saying why not."""
    if not password:
        raise PasswordRefused("empty password refused; nothing was changed")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordRefused(
            f"password too short: use at least {MIN_PASSWORD_LENGTH} characters; "
            "nothing was changed"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordRefused(f"password longer than {MAX_PASSWORD_LENGTH} characters refused")
    if password.strip() != password:
        raise PasswordRefused("password starts or ends with white space; nothing was changed")
    return password


@dataclass(frozen=True)
class Account:
    """One entry of the users file."""

    name: str
    kind: str  # user | robot
    secret_hash: str
    groups: frozenset[str]

    def identity(self) -> Identity:
        """The identity a successful login with this account gets."""
        return self._identity

    @functools.cached_property
    def credential(self) -> str:
        """The generation of this account's credential: a fingerprint of its kind and stored
        secret hash, which a token or console session binds and which must still match when it
        is used.

        Any change of the secret changes it: a new password (Argon2 salts every hash anew, so
        even the same password set again), a robot deleted and created again under the same
        name (a new token), a user replaced by a robot, an edit of the hash by hand. A change
        of groups alone does not (the permissions follow the groups on the next request anyway).
        Computed once per account as read from the file, so the check on every request is one
        string comparison. It reveals nothing usable about the secret: it hashes the stored
        hash, whose input is a salted Argon2 hash or the SHA-256 of 256 random bits.
        """
        material = f"trustyard credential\0{self.kind}\0{self.name}\0{self.secret_hash}"
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    @functools.cached_property
    def _identity(self) -> Identity:
        # Made once per account as read from the file (a changed file makes new accounts).
        return Identity(self.name, self.kind, self.groups)


def hash_password(password: str) -> str:
    """The Argon2id hash of a password, for the users file."""
    return _HASHER.hash(password)


def new_robot_token() -> str:
    """A fresh robot token (show it once, store only `robot_token_hash`)."""
    return ROBOT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def robot_token_hash(token: str) -> str:
    """The stored form of a robot token."""
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    """The users file, re-read whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fspath = os.fspath(path)
        self._stamp: tuple[int, ...] | None = None
        self._accounts: dict[str, Account] = {}
        #: The event loop in whose current iteration the file was last looked at, if any.
        self._checked_in: asyncio.AbstractEventLoop | None = None

    def accounts(self) -> dict[str, Account]:
        """Every account by name (reloading the file if it changed).

        The file decides every request as it is after that request arrived, whichever process
        changed it (another worker's or replica's `trustyard user remove`, an edit by hand). It
        is looked at (one `stat`; read again only when it changed) at most once per iteration of
        the event loop: a request's bytes are read in one iteration and its handler runs in a
        later one, so the look that decides it is always taken after it arrived. (A `stat` per
        request would cost more than the rest of authentication: it lets the database thread
        take the GIL, and the loop then waits to get it back.) Off the loop (a thread) the file
        is looked at on every call.

        Every write replaces the file (a new inode and ctime), so a rewrite of the same size
        within one tick of the file system's clock is seen as well as any other.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # a thread or a command: no loop, look every time
            loop = None
        if loop is not None and self._checked_in is loop:
            return self._accounts
        try:
            stat = os.stat(self._fspath)
        except FileNotFoundError:
            self._stamp, self._accounts = None, {}
        else:
            stamp = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
            if stamp != self._stamp:
                self._accounts = _parse(self._read())
                self._stamp = stamp
        if loop is not None:
            # Callbacks queued from now on run in the next iteration, after this one: every
            # request that arrives after this look is decided by a new one.
            self._checked_in = loop
            loop.call_soon(self._look_again)
        return self._accounts

    def _look_again(self) -> None:
        self._checked_in = None

    def get(self, name: str) -> Account | None:
        """The account called `name`, if any."""
        return self.accounts().get(name)

    def verify(self, name: str, secret: str) -> Account | None:
        """The account when `secret` is its password or robot token; None otherwise.

        Blocking (Argon2 takes tens of milliseconds by design): call it from a thread.
        """
        account = self.get(name)
        if account is None:
            _verify_password(_dummy_hash(), secret)
            return None
        if account.kind == "robot":
            given = robot_token_hash(secret)
            return account if hmac.compare_digest(given, account.secret_hash) else None
        return account if _verify_password(account.secret_hash, secret) else None

    def add_user(self, name: str, password: str, groups: list[str], *, replace: bool) -> None:
        """Add (or with `replace`, update) a user with an Argon2id-hashed password (the command
        line checks the password with `check_password` first)."""
        self._add(name, "users", {"password": hash_password(password)}, groups, replace)

    def add_robot(self, name: str, groups: list[str], *, replace: bool) -> str:
        """Add a robot and return its token: the only time it is ever seen."""
        token = new_robot_token()
        self._add(name, "robots", {"token_sha256": robot_token_hash(token)}, groups, replace)
        return token

    def remove(self, name: str) -> bool:
        """Remove a user or robot; whether it existed."""
        document = self._read()
        found = False
        for section in ("users", "robots"):
            if name in (document.get(section) or {}):
                del document[section][name]
                found = True
        if found:
            self._write(document)
        return found

    def _add(
        self, name: str, section: str, secret: dict[str, str], groups: list[str], replace: bool
    ) -> None:
        if NAME_RE.fullmatch(name) is None:
            raise UsersFileError(f"invalid name {name!r}: use lowercase letters, digits, . _ -")
        for group in groups:
            if NAME_RE.fullmatch(group) is None:
                raise UsersFileError(f"invalid group name {group!r}")
        document = self._read()
        other = "robots" if section == "users" else "users"
        if name in (document.get(other) or {}):
            raise UsersFileError(f"{name!r} already exists as one of the {other}")
        entries = document.setdefault(section, {}) or {}
        document[section] = entries
        if name in entries and not replace:
            raise UsersFileError(f"{name!r} already exists (use --replace to change it)")
        entries[name] = {**secret, "groups": sorted(set(groups))}
        self._write(document)

    def _read(self) -> dict[str, Any]:
        try:
            loaded = yaml.safe_load(self.path.read_text()) or {}
        except FileNotFoundError:
            return {}
        except (OSError, yaml.YAMLError) as exc:
            raise UsersFileError(f"{self.path}: cannot read: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsersFileError(f"{self.path}: the top level must be a mapping")
        return loaded

    def _write(self, document: dict[str, Any]) -> None:
        """Replace the file with `document` whole, or leave it as it was (a full disk, a
        read-only folder: `UsersFileError` saying why, and no partial copy left beside it)."""
        try:
            self._replace(document)
        except OSError as exc:
            raise UsersFileError(f"{self.path}: cannot write: {exc.strerror or exc}") from None

    def _replace(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".users-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as out:
                yaml.safe_dump(document, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def _verify_password(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _parse(document: dict[str, Any]) -> dict[str, Account]:
    accounts: dict[str, Account] = {}
    for section, kind, key in (("users", "user", "password"), ("robots", "robot", "token_sha256")):
        for name, entry in (document.get(section) or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                raise UsersFileError(f"{section}.{name}: expected a mapping with {key!r}")
            groups = frozenset(str(group) for group in entry.get("groups") or [])
            accounts[str(name)] = Account(str(name), kind, entry[key], groups)
    return accounts

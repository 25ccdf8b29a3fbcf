"""Configuration: built-in defaults, then a YAML file, then `TRUSTYARD_*` variables, then flags.

Every key, its type and its default is in `config_schema.json` beside this module; a config that
does not match is refused with every problem listed at once.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from registry.grammar import parse_count

ENV_PREFIX = "TRUSTYARD_"

DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:5000",
    "data_dir": "./trustyard-data",
    "log_level": "info",
    "access_log": False,
    "storage": {"backend": "filesystem", "fsync": True, "delete_enabled": True},
    "uploads": {"stale_after": "24h", "cleanup_interval": "1h"},
    "gc": {"grace_period": "1h", "delete_untagged": True},
    "shutdown_timeout": "30s",
    "idle_timeout": "60s",
}

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


def parse_duration(text: str | float) -> float:
    """`90s`, `15m`, `1h`, `7d` (or a number of seconds) in seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"invalid duration {text!r}: use e.g. 90s, 15m, 1h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class Config:
    """The effective configuration of one Trustyard process."""

    host: str
    port: int
    data_dir: Path
    log_level: str
    access_log: bool
    fsync: bool
    delete_enabled: bool
    stale_upload_age: float
    upload_cleanup_interval: float
    gc_grace_period: float
    gc_delete_untagged: bool
    shutdown_timeout: float
    raw: dict[str, Any]
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def policy_file(self) -> Path | None:
        """The policy file to enforce (`policy.file`), or None: everything is allowed."""
        section = self.raw.get("policy") or {}
        return Path(section["file"]) if section.get("file") else None

    @property
    def policy_poll_interval(self) -> float | None:
        """How often to look for a changed policy file, or None when `policy.reload` is false."""
        section = self.raw.get("policy") or {}
        if section.get("reload", True) is False:
            return None
        return parse_duration(section.get("poll_interval", "2s"))

    @property
    def idle_timeout(self) -> float:
        """How long a connection may go without a whole request's headers (a client trickling
        them, or an idle keep-alive) before it is closed."""
        return parse_duration(self.raw.get("idle_timeout", DEFAULTS["idle_timeout"]))

    @property
    def auth_enabled(self) -> bool:
        """Whether an `auth` section turns authentication on (absent: an open registry)."""
        section = self.raw.get("auth")
        return isinstance(section, dict) and section.get("enabled", True) is not False


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, the YAML file at `path`, `TRUSTYARD_*` variables and `overrides`."""
    merged = json.loads(json.dumps(DEFAULTS))
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        _merge(merged, loaded)
    _merge(merged, _from_environment(os.environ if environ is None else environ))
    _merge(merged, {k: v for k, v in (overrides or {}).items() if v is not None})
    _validate(merged, str(path) if path else "configuration")
    return _build(merged)


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """`TRUSTYARD_GC__GRACE_PERIOD=2h` -> {"gc": {"grace_period": "2h"}} (YAML-typed values)."""
    found: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        node = found
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        try:
            node[keys[-1]] = yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            node[keys[-1]] = value
    return found


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _validate(document: dict[str, Any], source: str) -> None:
    schema = json.loads(resources.files("registry").joinpath("config_schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    problems = [
        f"{source}: {'.'.join(str(p) for p in error.absolute_path) or '(top level)'}: "
        f"{error.message}"
        for error in errors
    ]
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _build(document: dict[str, Any]) -> Config:
    host, _, port_text = str(document["listen"]).rpartition(":")
    port = parse_count(port_text, 5)
    if not host or port is None or not 0 < port < 65536:
        raise ConfigError(f"listen: expected HOST:PORT, got {document['listen']!r:.100}")
    storage = document["storage"]
    return Config(
        host=host.strip("[]"),
        port=port,
        data_dir=Path(document["data_dir"]),
        log_level=document["log_level"],
        access_log=document["access_log"],
        fsync=storage["fsync"],
        delete_enabled=storage["delete_enabled"],
        stale_upload_age=parse_duration(document["uploads"]["stale_after"]),
        upload_cleanup_interval=parse_duration(document["uploads"]["cleanup_interval"]),
        gc_grace_period=parse_duration(document["gc"]["grace_period"]),
        gc_delete_untagged=document["gc"]["delete_untagged"],
        shutdown_timeout=parse_duration(document["shutdown_timeout"]),
        raw=document,
        tls_cert=Path(document["tls"]["cert"]) if "tls" in document else None,
        tls_key=Path(document["tls"]["key"]) if "tls" in document else None,
    )

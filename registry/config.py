"""Configuration: built-in defaults, then a YAML file, then `TRUSTYARD_*` variables, then flags.

Every key, its type and its default is in `config_schema.json` beside this module; a config that
does not match is refused with every problem listed at once, each with where it came from
(`trustyard.yaml:7: gc.grace_priod: unknown key; did you mean grace_period?`, or the
`TRUSTYARD_*` variable, or the command line). Relative paths in the file (`data_dir`,
`policy.file`, `tls.*`, `auth.users_file`, `auth.token.signing_key`) are read relative to the
file's folder, as the policy file's own paths are; paths from variables and flags relative to the
working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
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

from registry.upstream_settings import ProxyConfigError, ProxySettings, load_proxy_settings
from shared.durations import parse_duration
from storage.metadata.postgresql.url import MetadataUrlInvalid, check_url
from storage.oci.grammar import parse_count
from storage.settings import BlobStoreSettings, S3Settings

ENV_PREFIX = "TRUSTYARD_"

DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:5000",
    "data_dir": "./trustyard-data",
    "log_level": "info",
    "log_format": "text",
    "access_log": False,
    "storage": {"backend": "filesystem", "fsync": True, "delete_enabled": True},
    "uploads": {"stale_after": "24h", "cleanup_interval": "1h"},
    "gc": {"grace_period": "1h", "delete_untagged": True},
    "shutdown_timeout": "30s",
    "idle_timeout": "60s",
    "workers": 1,
}


#: Keys whose values are file system paths: relative ones in a file resolve against its folder.
PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data_dir",),
    ("policy", "file"),
    ("tls", "cert"),
    ("tls", "key"),
    ("auth", "users_file"),
    ("auth", "token", "signing_key"),
)


class ConfigError(ValueError):
    """The configuration is invalid; the message lists every problem."""


@dataclass(frozen=True)
class Config:
    """The effective configuration of one Trustyard process."""

    host: str
    port: int
    data_dir: Path
    log_level: str
    access_log: bool
    log_format: str
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
    proxy: ProxySettings | None = None  # the upstreams proxied, if any
    #: Server processes sharing the listening port (`serve --workers`, `registry.workers`).
    workers: int = 1
    #: How long `serve --workers` waits for every worker to listen before giving up.
    worker_start_timeout: float = 60.0

    @property
    def blob_store(self) -> BlobStoreSettings:
        """What `storage.backends.open_blob_store` needs: the backend, its place and options."""
        storage = self.raw["storage"]
        return BlobStoreSettings(
            backend=storage["backend"],
            data_dir=self.data_dir,
            fsync=self.fsync,
            s3=s3_settings(storage.get("s3") or {}) if storage["backend"] == "s3" else None,
        )

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
    def public_url(self) -> str | None:
        """The URL clients reach this registry at (`public_url`, no trailing slash), if set."""
        url = self.raw.get("public_url")
        return url.rstrip("/") if url else None

    @property
    def metadata_url(self) -> str | None:
        """The PostgreSQL URL of the metadata database (`metadata`), or None: SQLite in the data
        directory."""
        value = self.raw.get("metadata")
        return None if value in (None, "sqlite") else str(value)

    @property
    def auth_enabled(self) -> bool:
        """Whether an `auth` section turns authentication on (absent: an open registry)."""
        section = self.raw.get("auth")
        return isinstance(section, dict) and section.get("enabled", True) is not False


def s3_settings(section: Mapping[str, Any]) -> S3Settings:
    """`storage.s3` as storage's settings object (durations in seconds)."""
    raw = dict(section or {})
    for key in ("redirect_expiry", "connect_timeout", "read_timeout", "upload_memory_wait"):
        if key in raw:
            raw[key] = parse_duration(raw[key])
    return S3Settings(**raw)


def load_config(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults, the YAML file at `path`, `TRUSTYARD_*` variables and `overrides`."""
    merged = json.loads(json.dumps(DEFAULTS))
    origins = _Origins()
    if path is not None:
        loaded, origins.file_lines = _read_file(path)
        origins.file = str(path)
        _resolve_paths(loaded, path.parent)
        for upstream in loaded.get("upstreams") or []:  # a list: not in PATH_KEYS
            _resolve_paths(upstream, path.parent, (("ca_file",), ("password_file",)))
        _merge(merged, loaded)
    from_env = _from_environment(os.environ if environ is None else environ)
    origins.env = {leaf: ENV_PREFIX + "__".join(leaf).upper() for leaf in _leaves(from_env)}
    _merge(merged, from_env)
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    origins.flags = _leaves(flags)
    _merge(merged, flags)
    _validate(merged, origins)
    _check_metadata_url(merged.get("metadata"), origins)
    try:
        proxy = load_proxy_settings(
            merged, os.environ if environ is None else environ, parse_duration
        )
    except ProxyConfigError as exc:
        raise ConfigError(f"invalid configuration:\n  {exc}") from None
    return dataclasses.replace(_build(merged), proxy=proxy)


def _read_file(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], int]]:
    """The YAML mapping at `path` and the line of every key in it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        detail = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML: {detail}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    lines: dict[tuple[str, ...], int] = {}

    def walk(current: yaml.Node, at: tuple[str, ...]) -> None:
        lines.setdefault(at, current.start_mark.line + 1)
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                lines[(*at, str(key.value))] = key.start_mark.line + 1
                walk(value, (*at, str(key.value)))
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*at, str(index)))

    if node is not None:
        walk(node, ())
    return loaded, lines


def _resolve_paths(
    document: dict[str, Any], folder: Path, keys_list: tuple[tuple[str, ...], ...] = PATH_KEYS
) -> None:
    """Make the relative paths of a configuration file relative to the file's folder."""
    for keys in keys_list:
        node: Any = document
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = node[keys[-1]]
            if value and not Path(value).is_absolute():
                node[keys[-1]] = str(folder / value)


class _Origins:
    """Where each setting came from, to say so in an error."""

    def __init__(self) -> None:
        self.file: str | None = None
        self.file_lines: dict[tuple[str, ...], int] = {}
        self.env: dict[tuple[str, ...], str] = {}
        self.flags: set[tuple[str, ...]] = set()

    def of(self, path: tuple[str, ...]) -> str:
        """`file:line`, `TRUSTYARD_X__Y`, `command line` or `configuration` for `path`."""
        if any(_related(leaf, path) for leaf in self.flags):
            return "command line"
        for leaf, name in self.env.items():
            if _related(leaf, path):
                return name
        if self.file is not None:
            at = path
            while at not in self.file_lines and at:
                at = at[:-1]
            if at in self.file_lines:
                return f"{self.file}:{self.file_lines[at]}"
        return "configuration"


def _related(leaf: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether a value set at `leaf` is (or holds, or is held by) the setting at `path`."""
    shorter = min(len(leaf), len(path))
    return leaf[:shorter] == path[:shorter]


def _leaves(document: Mapping[str, Any], at: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The paths of every non-mapping value in `document`."""
    found: set[tuple[str, ...]] = set()
    for key, value in document.items():
        if isinstance(value, Mapping):
            found |= _leaves(value, (*at, str(key)))
        else:
            found.add((*at, str(key)))
    return found


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """`TRUSTYARD_GC__GRACE_PERIOD=2h` -> {"gc": {"grace_period": "2h"}} (YAML-typed values).

    Only variables naming a top-level setting are settings: others with the prefix are not ours
    to refuse (Kubernetes injects `TRUSTYARD_PORT`, `TRUSTYARD_SERVICE_HOST`, ... for a Service
    called trustyard; test switches share the prefix). A near miss of a setting's name is refused
    with the name it resembles, so a typo is not silently ignored."""
    settings = list(_schema()["properties"])
    found: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = name[len(ENV_PREFIX) :].lower().split("__")
        if keys[0] not in settings:
            near = difflib.get_close_matches(keys[0], settings, n=1, cutoff=0.8)
            if near:
                raise ConfigError(
                    f"{name}: not a setting; did you mean {ENV_PREFIX}{near[0].upper()}?"
                )
            continue
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


@functools.cache
def _schema() -> dict[str, Any]:
    """The configuration's JSON schema (`config_schema.json`)."""
    return json.loads(resources.files("registry").joinpath("config_schema.json").read_text())


def _validate(document: dict[str, Any], origins: _Origins) -> None:
    validator = jsonschema.Draft202012Validator(_schema())
    problems: set[tuple[tuple[int, int], str]] = set()
    for error in validator.iter_errors(document):
        path = tuple(str(p) for p in error.absolute_path)
        for at, message in _explain(error, path):
            origin = origins.of(at)
            line = origin.rpartition(":")[2]
            order = (0, int(line)) if line.isdigit() else (1, 0)
            problems.add((order, f"{origin}: {_dotted(at) or '(top level)'}: {message}"))
    if problems:
        lines = [text for _, text in sorted(problems)]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))


def _check_metadata_url(value: Any, origins: _Origins) -> None:
    """A PostgreSQL URL either driver would refuse or misread is refused now, with the parameter
    and what to write instead, not at the first connection (or the first write)."""
    if not isinstance(value, str) or not value.startswith(("postgresql://", "postgres://")):
        return
    try:
        check_url(value)
    except MetadataUrlInvalid as exc:
        raise ConfigError(
            f"invalid configuration:\n  {origins.of(('metadata',))}: metadata: {exc}"
        ) from None


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(f"[{p}]" if p.isdigit() else p for p in path).replace(".[", "[")


def _explain(
    error: jsonschema.ValidationError, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], str]]:
    """The problems one schema error stands for, in words, with "did you mean" for typos."""
    shown = json.dumps(error.instance, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        out = []
        for key in sorted(set(error.instance) - set(allowed)):
            hint = difflib.get_close_matches(key, allowed, n=1)
            expected = (
                f"did you mean {hint[0]}?" if hint else f"expected one of {', '.join(allowed)}"
            )
            out.append(((*path, key), f"unknown key; {expected}"))
        return out
    if error.validator == "required":
        missing = re.match(r"'([^']+)'", error.message)
        return [(path, f"missing required key {missing.group(1) if missing else error.message}")]
    if error.validator == "type":
        wanted = error.validator_value
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        return [(path, f"expected {' or '.join(names)}, got {shown}")]
    if error.validator == "enum":
        choices = [str(c) for c in error.validator_value]
        hint = difflib.get_close_matches(str(error.instance), choices, n=1)
        return [
            (
                path,
                f"expected one of {', '.join(choices)}, got {shown}"
                + (f"; did you mean {hint[0]}?" if hint else ""),
            )
        ]
    if error.validator == "pattern":
        wanted = error.schema.get("description") or f"text matching {error.validator_value}"
        return [(path, f"expected {wanted}; got {shown}")]
    if error.validator == "anyOf" and error.schema.get("description"):
        return [(path, f"expected {error.schema['description']}; got {shown}")]
    return [(path, error.message)]


def _build(document: dict[str, Any]) -> Config:
    host, _, port_text = str(document["listen"]).rpartition(":")
    port = parse_count(port_text, 5)
    # Port 0 lets the system pick a free port (the server logs the one it bound).
    if not host or port is None or not 0 <= port < 65536:
        raise ConfigError(f"listen: expected HOST:PORT, got {document['listen']!r:.100}")
    storage = document["storage"]
    return Config(
        host=host.strip("[]"),
        port=port,
        data_dir=Path(document["data_dir"]),
        log_level=document["log_level"],
        access_log=document["access_log"],
        log_format=document["log_format"],
        fsync=storage["fsync"],
        delete_enabled=storage["delete_enabled"],
        stale_upload_age=parse_duration(document["uploads"]["stale_after"]),
        upload_cleanup_interval=parse_duration(document["uploads"]["cleanup_interval"]),
        gc_grace_period=parse_duration(document["gc"]["grace_period"]),
        gc_delete_untagged=document["gc"]["delete_untagged"],
        shutdown_timeout=parse_duration(document["shutdown_timeout"]),
        workers=int(document["workers"]),
        raw=document,
        tls_cert=Path(document["tls"]["cert"]) if "tls" in document else None,
        tls_key=Path(document["tls"]["key"]) if "tls" in document else None,
    )

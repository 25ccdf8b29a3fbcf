"""Who the policy trusts: public keys, certificate authorities (Notation, private PKI) and keyless
identities (an OIDC issuer and a subject, certified by the Fulcio CA of a Sigstore trusted root).

The `trust:` section of the policy file is read here. Every trusted signer has a name; rules name
signers (`any_of: [release, gha-release]`), never keys. Keys, certificates and trusted roots are
read and checked completely each time the policy is loaded (a trusted root by the `sigstore`
package that verifies bundles with it), so a bad PEM or an incomplete root is a policy error with
a line number, not a failed push. The trust config's `version` covers the content of every file
it read, and `files` lists them, so replacing a key or a root file takes effect on the next reload
(SIGHUP, or the file watch) even when the policy file itself did not change.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

#: The Sigstore trusted roots that ship inside the `sigstore` package (read offline).
BUILTIN_ROOTS = {
    "production": "https%3A%2F%2Ftuf-repo-cdn.sigstore.dev",
    "staging": "https%3A%2F%2Ftuf-repo-cdn.sigstage.dev",
}


class TrustError(ValueError):
    """A trust entry cannot be used (unreadable file, bad PEM, unsupported key)."""


def key_id(key: PublicKey) -> str:
    """`sha256:<hex>` of the key's SubjectPublicKeyInfo DER: how a key is named in messages."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key of a type cosign signs with (ECDSA P-256/P-384/P-521, RSA, Ed25519)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise TrustError(f"not a PEM public key: {exc}") from None
    if isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        return key
    raise TrustError(f"unsupported key type {type(key).__name__}")


def load_certificates(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM bundle (at least one)."""
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise TrustError(f"not PEM certificates: {exc}") from None
    if not certificates:
        raise TrustError("no certificate in the PEM")
    return certificates


@dataclass(frozen=True)
class TrustedKey:
    """A named public key; with `rekor`, its signatures count only when logged in that Sigstore
    deployment's Rekor (checked offline against the root's Rekor keys)."""

    name: str
    key: PublicKey
    key_id: str
    rekor: SigstoreRoot | None = None


@dataclass(frozen=True)
class TrustedCertificates:
    """A named set of CA certificates (a Notation trust store or a private PKI for cosign) and,
    optionally, the exact subject (RFC 4514) the signing certificate must carry."""

    name: str
    roots: tuple[x509.Certificate, ...]
    subject: str | None = None


@dataclass(frozen=True)
class SigstoreRoot:
    """What keyless verification needs from a Sigstore trusted root: Fulcio CA certificates and
    Rekor public keys (by log id), and the file they came from."""

    source: str
    path: str
    fulcio: tuple[x509.Certificate, ...]
    rekor: Mapping[str, PublicKey]
    digest: str = ""  # sha256 of the file's bytes: a replaced root is a new root


@dataclass(frozen=True)
class TrustedIdentity:
    """A named keyless identity: the OIDC issuer and the certificate's subject (exact or regex)."""

    name: str
    issuer: str
    subject: str | None
    subject_regex: re.Pattern[str] | None
    root: SigstoreRoot

    def matches(self, issuer: str | None, subjects: tuple[str, ...]) -> bool:
        """Whether a certificate with this issuer and these SANs is this identity."""
        if issuer != self.issuer:
            return False
        if self.subject is not None:
            return self.subject in subjects
        assert self.subject_regex is not None
        return any(self.subject_regex.search(s) for s in subjects)

    def describe(self) -> str:
        """`issuer, subject` as a message shows it."""
        subject = self.subject or f"/{self.subject_regex.pattern if self.subject_regex else ''}/"
        return f"{subject} from {self.issuer}"


@dataclass(frozen=True)
class TrustConfig:
    """The policy's `trust:` section, parsed. `version` changes whenever anything in it does."""

    keys: Mapping[str, TrustedKey] = field(default_factory=dict)
    certificates: Mapping[str, TrustedCertificates] = field(default_factory=dict)
    identities: Mapping[str, TrustedIdentity] = field(default_factory=dict)
    version: str = "sha256:none"
    files: tuple[str, ...] = ()  # every file read (keys, certificates, trusted roots)

    @property
    def names(self) -> frozenset[str]:
        """Every signer name."""
        return frozenset(self.keys) | frozenset(self.certificates) | frozenset(self.identities)


@cache
def _builtin_root(spec: str) -> tuple[str, str]:
    path = resources.files("sigstore") / "_store" / BUILTIN_ROOTS[spec] / "trusted_root.json"
    return path.read_text(), str(path)


def load_sigstore_root(spec: str, base: str = ".", *, identities: bool = False) -> SigstoreRoot:
    """The Fulcio CAs and Rekor keys of a trusted root: `production` or `staging` (shipped inside
    the `sigstore` package, read offline) or a `trusted_root.json` path, read afresh each time.

    A file root is checked completely by the `sigstore` package (every field it needs to verify
    with the root, such as a log's `validFor.start`); with `identities`, it must also hold a
    Fulcio CA that certificate bundles can be verified against."""
    if spec in BUILTIN_ROOTS:
        text, where = _builtin_root(spec)
    else:
        file = Path(base, spec)
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise TrustError(f"cannot read trusted root {file}: {why}") from None
        where = str(file)
        _check_with_sigstore(file, identities)
    try:
        document = json.loads(text)
        fulcio = tuple(
            x509.load_der_x509_certificate(_b64(cert["rawBytes"]))
            for authority in document.get("certificateAuthorities", [])
            for cert in authority["certChain"]["certificates"]
        )
        rekor: dict[str, PublicKey] = {}
        for log in document.get("tlogs", []):
            der = _b64(log["publicKey"]["rawBytes"])
            public = serialization.load_der_public_key(der)
            if isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
                rekor[hashlib.sha256(der).hexdigest()] = public
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrustError(f"{where}: not a Sigstore trusted root: {exc}") from None
    digest = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return SigstoreRoot(spec, where, fulcio, rekor, digest)


def _check_with_sigstore(file: Path, identities: bool) -> None:
    """Parse a trusted root file as the `sigstore` package will when it verifies with it."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import TrustedRoot
    from sigstore.verify import Verifier

    try:
        root = TrustedRoot.from_file(str(file))
        if identities:
            Verifier(trusted_root=root)
    except (SigstoreError, ValueError, KeyError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[:2]
        raise TrustError(f"{file}: not a usable Sigstore trusted root: {' '.join(first)}") from None


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def _pem(entry: Mapping[str, Any], base: Path) -> bytes:
    if "pem" in entry:
        return str(entry["pem"]).encode()
    file = base / str(entry["pem_file"])
    try:
        return file.read_bytes()
    except OSError as exc:
        raise TrustError(f"cannot read {file}: {exc.strerror}") from None


def parse_trust(
    section: Mapping[str, Any] | None, base: Path = Path(".")
) -> tuple[TrustConfig, list[tuple[tuple[str | int, ...], str]]]:
    """Build a `TrustConfig` from a schema-valid `trust:` mapping; also return the problems found
    (path inside the section, message), so the loader can report them all with line numbers.

    Relative `pem_file` and `trusted_root` paths are read from `base` (the policy's folder).
    """
    section = section or {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    keys: dict[str, TrustedKey] = {}
    certificates: dict[str, TrustedCertificates] = {}
    identities: dict[str, TrustedIdentity] = {}
    fingerprint: dict[str, Any] = {}
    files: list[str] = []
    for name, entry in (section.get("keys") or {}).items():
        if "pem_file" in entry:
            files.append(str(base / str(entry["pem_file"])))
        if "rekor" in entry and str(entry["rekor"]) not in BUILTIN_ROOTS:
            files.append(str(base / str(entry["rekor"])))
        try:
            key = load_public_key(_pem(entry, base))
        except TrustError as exc:
            problems.append((("keys", name), str(exc)))
            continue
        rekor = None
        if "rekor" in entry:
            try:
                rekor = load_sigstore_root(str(entry["rekor"]), str(base))
            except TrustError as exc:
                problems.append((("keys", name, "rekor"), str(exc)))
                continue
        keys[name] = TrustedKey(name, key, key_id(key), rekor)
        fingerprint[f"key:{name}"] = [keys[name].key_id, rekor.digest if rekor else None]
    for name, entry in (section.get("certificates") or {}).items():
        if "pem_file" in entry:
            files.append(str(base / str(entry["pem_file"])))
        try:
            roots = load_certificates(_pem(entry, base))
        except TrustError as exc:
            problems.append((("certificates", name), str(exc)))
            continue
        certificates[name] = TrustedCertificates(name, roots, entry.get("subject"))
        fingerprint[f"certificates:{name}"] = [
            [c.fingerprint(_sha256()).hex() for c in roots],
            entry.get("subject"),
        ]
    for name, entry in (section.get("identities") or {}).items():
        spec = str(entry.get("trusted_root", "production"))
        if spec not in BUILTIN_ROOTS:
            files.append(str(base / spec))
        regex = None
        if "subject_regex" in entry:
            try:
                regex = re.compile(entry["subject_regex"])
            except re.error as exc:
                problems.append(
                    (
                        ("identities", name, "subject_regex"),
                        f"not a valid regular expression: {exc}",
                    )
                )
                continue
        try:
            root = load_sigstore_root(spec, str(base), identities=True)
        except TrustError as exc:
            problems.append((("identities", name, "trusted_root"), str(exc)))
            continue
        identities[name] = TrustedIdentity(name, entry["issuer"], entry.get("subject"), regex, root)
        fingerprint[f"identity:{name}"] = [
            entry["issuer"],
            entry.get("subject"),
            entry.get("subject_regex"),
            root.digest,
        ]
    names = [*keys, *certificates, *identities]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(((), f"signer name {name} is used twice; names must be unique"))
    version = (
        "sha256:" + hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    )
    return TrustConfig(
        keys, certificates, identities, version, tuple(dict.fromkeys(files))
    ), problems


def _sha256() -> hashes.HashAlgorithm:
    return hashes.SHA256()

"""Operator mistakes end `trustyard` with one line naming the thing and the fix, exit 2.

Each test runs the real command in a subprocess and reads its stderr: no traceback, one line.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from storage.layout import DataLayout
from storage.metadata import open_metadata
from storage.metadata.postgresql import redact, schema_version_at
from tests.conftest import registry_metadata_url
from tests.operations.cli import ROOT, one_line, trustyard


async def _create_metadata(data: Path) -> None:
    """The metadata database of a registry at `data` (the test's backend), with its schema."""
    db = await open_metadata(DataLayout(data).database, registry_metadata_url())
    await db.close()


async def _write_postgresql_schema_version(url: str, version: int) -> None:
    """A PostgreSQL database whose schema another Trustyard release wrote (`version`)."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        await connection.execute("INSERT INTO schema_version VALUES ($1)", version)
    finally:
        await connection.close()


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def serve(tmp_path: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    listen = f"127.0.0.1:{port or 0}"  # port 0: the system picks a free one at bind
    return trustyard("serve", "--listen", listen, *args)


def test_port_already_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = serve(tmp_path, "--data-dir", str(tmp_path / "data"), port=port)
    assert result.returncode == 2
    line = one_line(result)
    assert f"127.0.0.1:{port}" in line
    assert "already in use" in line
    assert "--listen" in line
    assert not (tmp_path / "data").exists()  # nothing was created for a server that never ran


def test_listen_on_an_address_of_another_machine(tmp_path):
    result = trustyard("serve", "--listen", "no-such-host.invalid:5000", "--data-dir", "x")
    assert result.returncode == 2
    assert "no-such-host.invalid" in one_line(result)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing cert", "TLS certificate file {cert_missing} does not exist"),
        ("missing key", "TLS key file {key_missing} does not exist"),
        ("mismatch", "TLS key {other_key} does not belong to the certificate {cert}"),
        ("swapped", "--tls-cert {key} and --tls-key {cert} are swapped"),
    ],
)
def test_tls_files(tmp_path, case, expected):
    cert, key = _certificate(tmp_path / "a", "a")
    _, other_key = _certificate(tmp_path / "b", "b")
    names = {
        "cert": cert,
        "key": key,
        "other_key": other_key,
        "cert_missing": tmp_path / "nope.crt",
        "key_missing": tmp_path / "nope.key",
    }
    pair = {
        "missing cert": (names["cert_missing"], key),
        "missing key": (cert, names["key_missing"]),
        "mismatch": (cert, other_key),
        "swapped": (key, cert),
    }[case]
    result = serve(
        tmp_path,
        "--data-dir",
        str(tmp_path / "data"),
        "--tls-cert",
        str(pair[0]),
        "--tls-key",
        str(pair[1]),
    )
    assert result.returncode == 2
    assert expected.format(**names) in one_line(result)


def test_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a directory")
    result = serve(tmp_path, "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    line = one_line(result)
    assert f"data directory {tmp_path / 'data'} is a file" in line


def test_data_dir_that_is_not_writable(tmp_path):
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    # Root ignores permission bits; an immutable directory refuses even root.
    root = os.getuid() == 0
    if root:
        made = subprocess.run(["chattr", "+i", str(data)], capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {made.stderr!r}")
    else:
        os.chmod(data, 0o555)
    try:
        result = serve(tmp_path, "--data-dir", str(data))
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(data)], check=True)
        os.chmod(data, 0o755)
    assert result.returncode == 2
    line = one_line(result)
    assert f"data directory {data} is not writable by uid {os.getuid()}" in line
    assert "chown" in line


def test_serve_creates_a_missing_data_dir_and_says_so(tmp_path):
    data = tmp_path / "new-data"
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "registry", "serve"),
            *("--listen", "127.0.0.1:0", "--data-dir", str(data)),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stderr is not None
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "listening on" in line:
                break
        assert any(f"created the data directory {data}" in line for line in seen), seen
        assert data.is_dir()
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize(
    "command",
    [
        ["gc"],
        ["gc", "--dry-run"],
        ["decisions"],
        ["library", "stale"],
        ["policy", "explain", "policy.yaml", "app:v1"],
        ["backup", "backup-folder"],
        ["robot", "remove", "builder"],
        ["library", "import", "image.tar", "--as", "python:3.12"],
    ],
)
def test_offline_commands_refuse_a_missing_data_dir(tmp_path, command):
    (tmp_path / "policy.yaml").write_text("version: 1\nrules: []\n")
    result = trustyard(*command, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line(result)
    assert "data directory trustyard-data does not exist" in line
    assert "--data-dir" in line
    assert not (tmp_path / "trustyard-data").exists()


@pytest.mark.empty_metadata  # a database without Trustyard's schema
def test_offline_commands_refuse_a_folder_without_a_database(tmp_path):
    (tmp_path / "empty").mkdir()
    result = trustyard("gc", "--data-dir", str(tmp_path / "empty"))
    assert result.returncode == 2
    url = registry_metadata_url()
    if url is None:
        assert "holds no Trustyard database (metadata.sqlite)" in one_line(result)
    else:
        # PostgreSQL's counterpart of the folder without a file: a database without the schema
        # (the wrong URL), left as it was.
        assert f"the PostgreSQL database {redact(url)} holds no Trustyard schema" in one_line(
            result
        )
        assert asyncio.run(schema_version_at(url)) is None
    assert list((tmp_path / "empty").iterdir()) == []


def test_version():
    result = trustyard("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("trustyard ")
    assert result.stdout.split()[1][0].isdigit()


@pytest.mark.sqlite_only  # a damaged SQLite file: PostgreSQL has no file of ours to damage
def test_a_damaged_database_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.sqlite").write_bytes(b"this is not SQLite" * 100)
    result = trustyard("gc", "--data-dir", str(data), timeout=60)
    assert result.returncode == 2
    line = one_line(result)
    assert f"the metadata database {data / 'metadata.sqlite'} cannot be used" in line
    assert "file is not a database" in line
    served = serve(tmp_path, "--data-dir", str(data))
    assert served.returncode == 2
    assert "file is not a database" in one_line(served)


def test_an_unreachable_s3_store_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    asyncio.run(_create_metadata(data))
    # A port held bound but never listening: connections to it are refused for the whole test.
    unreachable = socket.socket()
    unreachable.bind(("127.0.0.1", 0))
    env = {
        "TRUSTYARD_STORAGE__BACKEND": "s3",
        "TRUSTYARD_STORAGE__S3__BUCKET": "trustyard",
        "TRUSTYARD_STORAGE__S3__ENDPOINT_URL": f"http://127.0.0.1:{unreachable.getsockname()[1]}",
        "TRUSTYARD_STORAGE__S3__MAX_ATTEMPTS": "1",
        "TRUSTYARD_LOG_LEVEL": "error",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
    }
    with unreachable:
        result = trustyard("gc", "--data-dir", str(data), env=env, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("trustyard: ")]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1
    assert lines[0].startswith("trustyard: the blob store is unavailable")
    assert "storage.s3" in lines[0]


def test_a_token_signing_key_that_is_no_key(tmp_path):
    (tmp_path / "bad.pem").write_text("not a key\n")
    config = tmp_path / "trustyard.yaml"
    config.write_text("auth:\n  token: {signing_key: bad.pem}\n")
    result = serve(tmp_path, "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    line = one_line(result)
    assert f"token signing key {tmp_path / 'bad.pem'} is not a usable EC P-256 private key" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.empty_metadata  # a database without Trustyard's schema
def test_a_database_of_another_schema_version_is_one_line(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    url = registry_metadata_url()
    if url is None:
        db = sqlite3.connect(data / "metadata.sqlite")
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (999)")
        db.commit()
        db.close()
    else:
        asyncio.run(_write_postgresql_schema_version(url, 999))
    result = trustyard("decisions", "--data-dir", str(data))
    assert result.returncode == 2
    line = one_line(result)
    assert "has schema version 999; this Trustyard knows version" in line
    # A newer release wrote it: `trustyard migrate` cannot go back, the newer release can.
    assert "run the Trustyard release that wrote it" in line

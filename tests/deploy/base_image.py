"""An offline base image for deploy/Dockerfile: this machine's Python, as `docker import` wants it.

The Dockerfile's default base (python:3.12-slim) needs a registry on the internet. The tests
build the image from the same Dockerfile with `--build-arg BASE=` this image instead: the running
interpreter, its standard library and the installed packages Trustyard depends on (so `pip
install .` resolves every dependency without an index), the shared libraries they link, and the
few programs the Dockerfile's RUN step uses (sh, rm, mkdir, chown, chmod).
"""

from __future__ import annotations

import importlib.metadata as metadata
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import Requirement

#: What `pip install .` needs present when it may not download anything.
ROOTS = ("trustyard", "pip", "setuptools", "wheel")
PROGRAMS = ("sh", "rm", "mkdir", "chown", "chmod")
#: Big parts of the standard library nothing here imports.
SKIPPED_STDLIB = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "__pycache__"}

ENV = [
    "PIP_NO_INDEX=1",
    "PIP_NO_BUILD_ISOLATION=0",  # pip reads "0" as: do not isolate (use installed setuptools)
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
]


def _closure(names: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions `names` need, with the extras their requirements ask for."""
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset()) for name in names]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: dict[str, metadata.Distribution] = {}
    while todo:
        name, extras = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not any(
                marker.evaluate({"extra": extra}) for extra in (extras or {""})
            ):
                continue
            todo.append((requirement.name, frozenset(requirement.extras)))
    return list(found.values())


def _libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every shared library `ldd` says the binaries need."""
    found: set[Path] = set()
    for binary in binaries:
        result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
        for line in result.stdout.splitlines():
            match = re.search(r"(/\S+)", line.split("=>")[-1])
            # ldd names a library by the binary's RUNPATH as given: `pkg/../pkg.libs/lib.so`
            # for a wheel's bundled libraries; the same file must not enter the tar twice.
            if match and Path(match.group(1)).exists():
                found.add(Path(os.path.normpath(match.group(1))))
    return found


def base_rootfs(target: Path) -> tuple[Path, list[str]]:
    """Write the rootfs tarball to `target`; (its path, the `--change` lines for docker import)."""
    prefix = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    files: set[Path] = set()
    executable = Path(sys.executable).resolve()
    files.add(executable)
    for entry in (prefix / "lib").glob("libpython*"):
        files.add(entry)
    for path in stdlib.rglob("*"):
        relative = path.relative_to(stdlib).parts
        if (
            path.is_file()
            and not (set(relative) & SKIPPED_STDLIB)
            and relative[0] != "site-packages"
        ):
            files.add(path)
    for dist in _closure(ROOTS):
        if dist.metadata["Name"] == "trustyard":
            continue  # its dependencies only: the Dockerfile installs Trustyard itself
        for name in dist.files or []:
            path = Path(os.path.normpath(str(dist.locate_file(name))))
            if path.is_file() and "__pycache__" not in path.parts and path.is_relative_to(site):
                files.add(path)
    programs = [Path(shutil.which(p) or f"/bin/{p}").resolve() for p in PROGRAMS]
    files.update(programs)
    shared = [p for p in files if p.suffix == ".so" or ".so." in p.name or p in programs]
    files.update(_libraries([executable, *shared]))
    with tarfile.open(target, "w") as tar:
        made: set[str] = set()

        def directory(path: Path) -> None:
            for parent in reversed([path, *path.parents]):
                name = str(parent).lstrip("/")
                if name and name not in made:
                    made.add(name)
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o1777 if name == "tmp" else 0o755
                    tar.addfile(info)

        directory(Path("/tmp"))
        for path in sorted(files):
            if str(path).lstrip("/") in made:
                continue
            directory(path.parent)
            made.add(str(path).lstrip("/"))
            # Links are stored as the files they name: /lib64/ld-linux-x86-64.so.2 is a link
            # into a folder the image does not otherwise have.
            real = path.resolve()
            info = tar.gettarinfo(real, arcname=str(path).lstrip("/"))
            if info.isreg():
                with real.open("rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)
        # The names the Dockerfile and its users call.
        bin_dir = prefix / "bin"
        for link, to in (("python", executable.name), ("python3", executable.name)):
            info = tarfile.TarInfo(str(bin_dir / link).lstrip("/"))
            info.type = tarfile.SYMTYPE
            info.linkname = to
            tar.addfile(info)
        pip = io.BytesIO(
            f"#!{executable}\nimport sys\nfrom pip._internal.cli.main import main\n"
            "sys.exit(main())\n".encode()
        )
        info = tarfile.TarInfo(str(bin_dir / "pip").lstrip("/"))
        info.mode, info.size = 0o755, len(pip.getvalue())
        tar.addfile(info, pip)
        sh = shutil.which("sh") or "/bin/sh"
        if Path(sh).resolve() != Path("/bin/sh"):
            info = tarfile.TarInfo("bin/sh")
            info.type = tarfile.SYMTYPE
            info.linkname = str(Path(sh).resolve())
            tar.addfile(info)
    path_env = f"PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin"
    return target, [f"ENV {path_env}", *(f"ENV {e}" for e in ENV)]


def main() -> None:  # pragma: no cover - a manual aid
    target, changes = base_rootfs(Path(sys.argv[1]))
    print(target, os.path.getsize(target), changes)


if __name__ == "__main__":  # pragma: no cover
    main()

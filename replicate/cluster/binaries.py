"""Find the PostgreSQL server binaries (initdb, pg_ctl, postgres) on this machine.

Search order: an explicit directory or ``$REPLICATE_PG_BINDIR``; ``initdb`` on
``PATH``; ``pg_config --bindir``; the newest ``/usr/lib/postgresql/*/bin``
(Debian and Ubuntu keep the server binaries there, off ``PATH``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from replicate.errors import PostgresNotFound

MIN_MAJOR = 13
REQUIRED = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "install the PostgreSQL server (13 or newer), e.g. `apt-get install postgresql` "
    "on Debian/Ubuntu or `dnf install postgresql-server` on Fedora, or point "
    "REPLICATE_PG_BINDIR at the directory holding initdb, pg_ctl and postgres"
)


@dataclass(frozen=True, slots=True)
class PgBinaries:
    """A directory of PostgreSQL server binaries and the major version they are."""

    bindir: Path
    major: int

    def path(self, program: str) -> str:
        return str(self.bindir / program)


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in REQUIRED)


def _candidates(explicit: Path | None) -> list[Path]:
    found: list[Path] = []
    if explicit is not None:
        return [explicit]
    env = os.environ.get("REPLICATE_PG_BINDIR")
    if env:
        return [Path(env)]
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            if out:
                found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass

    def version_key(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    found.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True))
    return found


def server_major(bindir: Path) -> int:
    """The major version of the ``postgres`` binary in ``bindir``."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise PostgresNotFound(f"cannot read the PostgreSQL version from {out.strip()!r}")
    return int(match.group(1))


def find_binaries(explicit: Path | str | None = None) -> PgBinaries:
    """Locate a complete, supported set of server binaries or raise PostgresNotFound."""
    tried: list[str] = []
    for directory in _candidates(Path(explicit) if explicit else None):
        tried.append(str(directory))
        if not _complete(directory):
            continue
        major = server_major(directory)
        if major < MIN_MAJOR:
            raise PostgresNotFound(
                f"PostgreSQL {major} in {directory} is too old; replicate needs {MIN_MAJOR} or newer",
                hint=INSTALL_HINT)
        return PgBinaries(directory, major)
    where = ", ".join(tried) if tried else "PATH, pg_config and /usr/lib/postgresql/*/bin"
    raise PostgresNotFound("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found",
                           detail=f"looked in: {where}", hint=INSTALL_HINT)

"""Finding PostgreSQL binaries, and the error a user gets when there are none."""

from pathlib import Path

import pytest

from replicate.cluster.binaries import find_binaries
from replicate.cluster.local import find_free_range, port_is_free
from replicate.errors import PostgresNotFound


def test_found_on_this_machine() -> None:
    binaries = find_binaries()
    assert binaries.major >= 13
    assert Path(binaries.path("initdb")).exists()


def test_env_override_to_nowhere_gives_install_hint(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REPLICATE_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresNotFound) as info:
        find_binaries()
    assert "apt-get install postgresql" in info.value.hint
    assert str(tmp_path) in info.value.detail
    assert info.value.sqlstate == "58P01"


def test_explicit_directory_wins(tmp_path: Path) -> None:
    real = find_binaries().bindir
    assert find_binaries(real).bindir == real
    with pytest.raises(PostgresNotFound):
        find_binaries(tmp_path)


def test_free_range_skips_busy_port() -> None:
    import socket
    base = find_free_range(4, start=31000)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 1))
        busy.listen()
        assert not port_is_free(base + 1)
        moved = find_free_range(4, start=base)
        assert moved > base + 1

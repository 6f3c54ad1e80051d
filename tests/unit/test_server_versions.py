"""Which PostgreSQL servers ``replicate init`` accepts, and when it warns about a mix."""

from __future__ import annotations

import pytest

from replicate.runtime.schema import UnsupportedServer, mixed_majors, require_supported


@pytest.mark.parametrize("version", [130000, 130023, 140023, 150014, 180001])
def test_supported_servers_pass(version: int) -> None:
    require_supported(version)


@pytest.mark.parametrize("version, major", [(120022, 12), (90624, 9)])
def test_older_servers_are_refused_with_feature_not_supported(version: int, major: int) -> None:
    with pytest.raises(UnsupportedServer) as caught:
        require_supported(version)
    assert caught.value.sqlstate == "0A000"
    assert f"PostgreSQL {major} is too old" in caught.value.message
    assert "13 or newer" in caught.value.message


def test_one_major_version_is_no_mix() -> None:
    assert mixed_majors({"n1": "15.4", "n2": "15.14 (Debian 15.14-0+deb12u1)", "n3": "15.1"}) \
        is None
    assert mixed_majors({}) is None


def test_different_majors_are_named_in_version_order() -> None:
    warning = mixed_majors({"n1": "15.4", "n2": "13.23", "n3": "15.14 (Debian)"})
    assert warning is not None
    assert "PostgreSQL 13 on n2; PostgreSQL 15 on n1, n3" in warning
    assert mixed_majors({"a": "9.6.24", "b": "10.1"}).index("PostgreSQL 9 ") < \
        mixed_majors({"a": "9.6.24", "b": "10.1"}).index("PostgreSQL 10 ")

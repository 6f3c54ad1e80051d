"""Every error class carries a valid SQLSTATE, and its text shows detail and hint."""

import re

import pytest

from replicate import errors


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, errors.ReplicateError)])
def test_sqlstate_is_five_characters(cls: type) -> None:
    assert re.fullmatch(r"[0-9A-Z]{5}", cls.sqlstate)


def test_text_and_override() -> None:
    exc = errors.ConfigError("bad", detail="d", hint="h", sqlstate="42000")
    assert str(exc) == "bad\nDETAIL: d\nHINT: h"
    assert exc.sqlstate == "42000"
    assert errors.ConfigError("x").sqlstate == "F0000"

"""Log entries and outcomes survive encoding exactly; malformed payloads are refused."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicate.command import (
    CANONICAL_SETTINGS, RESULT_SETTINGS, Column, Entry, Outcome, Param, Status, applied_settings,
    carried_settings,
)

params = st.builds(Param, st.none() | st.binary(max_size=20), st.integers(0, 5000), st.booleans())
entries = st.builds(
    Entry, st.text(min_size=1).filter(str.strip), st.tuples(*[params] * 2) | st.just(()),
    st.just((("search_path", "public"), ("TimeZone", "UTC"))) | st.just(()),
    st.none() | st.text(max_size=10), st.booleans())


@given(entries)
def test_entry_round_trip(entry: Entry) -> None:
    assert Entry.decode(entry.encode()) == entry


def test_outcome_round_trip() -> None:
    outcome = Outcome(7, "p1-1", Status.OK, "INSERT 0 1", 1,
                      (Column("id", 23, -1, 4, False),), ((b"1",), (None,)))
    assert Outcome.from_json(outcome.to_json()) == outcome
    error = Outcome(8, "p1-2", Status.ERROR, sqlstate="23505", message="dup", detail="d")
    assert Outcome.from_json(error.to_json()) == error
    assert not error.ok and outcome.ok


@pytest.mark.parametrize("payload", [b"", b"{", b'{"v":2,"sql":"x"}', b'{"v":1}',
                                     b'{"v":1,"sql":"x","kind":"bogus"}',
                                     b'{"v":1,"sql":"x","params":[[1]]}',
                                     # valid JSON of another shape (these raised
                                     # AttributeError, which stopped the apply loop)
                                     b"[1]", b"null", b'"x"', b"7",
                                     b'{"v":1,"sql":"x","settings":[]}',
                                     b'{"v":1,"sql":"x","kind":[]}', b"\xff"])
def test_malformed_payload(payload: bytes) -> None:
    with pytest.raises(ValueError, match="malformed log entry"):
        Entry.decode(payload)


def test_entry_validation() -> None:
    with pytest.raises(ValueError):
        Entry("  ")
    with pytest.raises(ValueError, match="work_mem"):
        Entry("select 1", settings=(("work_mem", "1MB"),))
    with pytest.raises(TypeError):
        Param("text")  # type: ignore[arg-type]


def test_an_entry_leaves_out_the_settings_a_session_has_at_their_canonical_values() -> None:
    session = dict(CANONICAL_SETTINGS, TimeZone="Etc/UTC", DateStyle="SQL, DMY")
    assert carried_settings(session) == (("TimeZone", "Etc/UTC"), ("DateStyle", "SQL, DMY"))
    assert carried_settings(dict(CANONICAL_SETTINGS)) == ()
    assert carried_settings({"search_path": None, "bytea_output": "escape"}) == (
        ("bytea_output", "escape"),)


@given(st.fixed_dictionaries({name: st.sampled_from([CANONICAL_SETTINGS[name], "x", ""])
                              for name in RESULT_SETTINGS}))
def test_what_an_entry_leaves_out_is_applied_as_the_session_had_it(session: dict) -> None:
    entry = Entry("select 1", settings=carried_settings(session))
    assert applied_settings(Entry.decode(entry.encode())) == session
    assert len(entry.encode()) <= len(Entry("select 1", settings=tuple(session.items())).encode())

"""Comparing check results: buckets that differ, rows that differ, exit codes."""

from replicate.check import CheckReport, TableReport, compare, diff_rows


def test_identical_nodes_agree() -> None:
    same = {'"public"."t"': {1: (2, "h1"), 7: (1, "h7")}}
    [report] = compare({"n1": same, "n2": same, "n3": same}, ['"public"."t"'])
    assert report.agree and report.rows == {"n1": 3, "n2": 3, "n3": 3}
    assert len(set(report.digest.values())) == 1


def test_one_bucket_differs() -> None:
    good = {"t": {1: (2, "h1"), 7: (1, "h7")}}
    bad = {"t": {1: (2, "h1"), 7: (1, "XX")}}
    missing = {"t": {1: (2, "h1")}}
    [report] = compare({"n1": good, "n2": bad, "n3": good}, ["t"])
    assert report.differing_buckets == [7] and not report.agree
    [report] = compare({"n1": good, "n2": missing}, ["t"])
    assert report.differing_buckets == [7] and report.rows == {"n1": 3, "n2": 2}


def test_diff_rows_names_keys_and_is_bounded() -> None:
    rows = {"n1": {"(1)": "a", "(2)": "b", "(3)": "c"},
            "n2": {"(1)": "a", "(2)": "B", "(4)": "d"}}
    assert diff_rows(rows) == [
        {"key": "(2)", "nodes": {"n1": "b", "n2": "B"}},
        {"key": "(3)", "nodes": {"n1": "c", "n2": None}},
        {"key": "(4)", "nodes": {"n1": None, "n2": "d"}}]
    many = {"n1": {f"({i})": "x" for i in range(100)}, "n2": {}}
    assert len(diff_rows(many, limit=5)) == 5


def test_exit_codes() -> None:
    ok = TableReport("t", {"n1": 1}, {"n1": "h"})
    bad = TableReport("t", {"n1": 1}, {"n1": "h"}, differing_buckets=[3])
    assert CheckReport("c", 5, [ok], {}).exit_code == 0
    assert CheckReport("c", 5, [ok], {"n3": "down"}).exit_code == 2
    assert CheckReport("c", 5, [bad], {"n3": "down"}).exit_code == 1


def test_a_differing_slot_is_shown_with_its_parameters() -> None:
    from replicate.check import MAX_STATEMENT_SHOWN, _statement
    from replicate.command import Entry, Param

    entry = Entry("INSERT INTO t\n  VALUES ($1, $2, $3, $4, $5)",
                  (Param(b"6"), Param((7).to_bytes(4, "big"), 23, True),
                   Param(b"\x00\x01", 17, True), Param(None),
                   Param((-2).to_bytes(8, "big", signed=True), 20, True)))
    assert _statement(entry) == ("INSERT INTO t VALUES ($1, $2, $3, $4, $5)  "
                                 "[$1='6', $2='7', $3='\\x0001', $4=NULL, $5='-2']")
    assert _statement(Entry("DELETE FROM t")) == "DELETE FROM t"
    long = _statement(Entry("SELECT " + "x, " * 200 + "1"))
    assert len(long) == MAX_STATEMENT_SHOWN and long.endswith("x, x...")


def test_outcomes_that_differ_make_the_check_fail() -> None:
    tables = [TableReport("t", {"n1": 1, "n2": 1}, {"n1": "a", "n2": "a"})]
    [same] = compare({"n1": {"outcomes": {0: (3, "h")}}, "n2": {"outcomes": {0: (3, "h")}}},
                     ["outcomes"])
    [differ] = compare({"n1": {"outcomes": {0: (3, "h")}}, "n2": {"outcomes": {0: (3, "X")}}},
                       ["outcomes"])
    assert CheckReport("c", 5, tables, {}, same).exit_code == 0
    report = CheckReport("c", 5, tables, {}, differ)
    assert not report.consistent and report.exit_code == 1
    assert report.to_json()["outcomes"]["differing_buckets"] == [0]

"""Why the gate refuses a statement: one table of refusal classes.

Each class has a stable ``reason`` (tests, logs and the proxy match on it), a SQLSTATE
(PostgreSQL's own code where one fits, else 0A000 feature_not_supported) and a default
hint showing how to write the statement deterministically. Refusals are
:class:`replicate.errors.RefusedStatement`, so the proxy sends them as an ErrorResponse.
"""

from __future__ import annotations

from replicate.errors import RefusedStatement

#: reason -> (SQLSTATE, default hint)
REASONS: dict[str, tuple[str, str]] = {
    "syntax": ("42601", "Fix the syntax; the gate refuses what it cannot parse when it "
                        "mentions a registered table."),
    "unregistered-read": ("0A000", "Register the table that is read, or read it in a separate "
                                   "statement and pass the values as literals or parameters."),
    "mixed-write": ("0A000", "Write registered and unregistered tables in separate statements."),
    "volatile-per-row": ("0A000", "Generate the value in the client and pass it as a literal "
                                  "or parameter, e.g. UPDATE t SET token = $1 WHERE id = 1, or "
                                  "write one row per statement with INSERT ... VALUES."),
    "volatile-function": ("0A000", "Call the function in a separate statement and pass its "
                                   "result as a literal, or declare it IMMUTABLE/STABLE if it "
                                   "really is."),
    "unknown-function": ("42883", "Create the function on every node and reload the gate's "
                                  "catalog, or compute the value in the client."),
    "node-dependent": ("0A000", "This value differs between nodes; compute it in the client "
                                "and pass it as a literal or parameter."),
    "session-state": ("0A000", "Use INSERT ... RETURNING to get generated values instead of "
                               "currval()/lastval()."),
    "unregistered-sequence": ("0A000", "Use a sequence owned by a registered table (a serial or "
                                       "identity column), or pass the value in."),
    "limit-order": ("0A000", "Add an ORDER BY that covers a primary key or a NOT NULL unique "
                             "key of the table, e.g. ... ORDER BY id LIMIT 10."),
    "aggregate-order": ("0A000", "Give the aggregate an ORDER BY over a unique key, e.g. "
                                 "string_agg(name, ',' ORDER BY id)."),
    "clock-literal": ("0A000", "Write now() or current_date (the gate fixes them once per "
                               "statement), or cast to text if you mean the word: 'today'::text."),
    "volatile-default": ("0A000", "Name the column and give its value explicitly, e.g. "
                                  "INSERT INTO t (id, created_at) "
                                  "VALUES (gen_random_uuid(), now()), one row per VALUES list."),
    "trigger": ("0A000", "Triggers run again on every node when the write is applied; give "
                         "the values in the statement instead (the gate fixes now() and "
                         "random()), or declare the trigger function STABLE if it only "
                         "computes from NEW/OLD."),
    "local-lock": ("0A000", "Row and table locks are taken on one node only and do not order "
                            "replicated writes; use a single UPDATE ... RETURNING, or optimistic "
                            "checks (UPDATE ... WHERE version = $1)."),
    "ddl": ("0A000", "Change registered tables with replicate: unregister the table, run the DDL "
                     "on every node, register it again."),
    "dynamic-sql": ("0A000", "Send the statements themselves instead of a DO block or "
                             "PREPARE, so the gate can check them (the extended protocol's "
                             "Parse/Bind is fine)."),
    "server-file": ("0A000", "Use COPY ... FROM STDIN (psql: \\copy); files and programs "
                             "differ between nodes."),
    "unclassified": ("0A000", "Rewrite it as plain INSERT/UPDATE/DELETE/MERGE on registered "
                              "tables."),
}


class GateRefusal(RefusedStatement):
    """A statement the SQL gate refuses. ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, *, hint: str | None = None,
                 detail: str | None = None) -> None:
        sqlstate, default_hint = REASONS[reason]
        super().__init__(message, hint=hint or default_hint, detail=detail, sqlstate=sqlstate)
        self.reason = reason

    def __repr__(self) -> str:
        return f"GateRefusal({self.reason!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, GateRefusal) and (self.reason, self.message, self.hint)
                == (other.reason, other.message, other.hint))

    def __hash__(self) -> int:
        return hash((self.reason, self.message))

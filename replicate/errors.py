"""The one error hierarchy of replicate.

Every error carries a PostgreSQL SQLSTATE so that the proxy can send it to a
client as an ErrorResponse, and the CLI can show it, without a translation
table somewhere else. Subclasses pick the SQLSTATE that a PostgreSQL client
would expect for that kind of failure; ``hint`` and ``detail`` map to the
ErrorResponse fields of the same names.
"""

from __future__ import annotations


class ReplicateError(Exception):
    """Base of every error replicate raises on purpose."""

    sqlstate: str = "XX000"  # internal_error

    def __init__(self, message: str, *, hint: str | None = None,
                 detail: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        if sqlstate is not None:
            self.sqlstate = sqlstate

    def __str__(self) -> str:
        text = self.message
        if self.detail:
            text += f"\nDETAIL: {self.detail}"
        if self.hint:
            text += f"\nHINT: {self.hint}"
        return text


class ConfigError(ReplicateError):
    """The cluster configuration is missing, unreadable or invalid."""

    sqlstate = "F0000"  # config_file_error


class ClusterError(ReplicateError):
    """A local PostgreSQL node could not be created, started or stopped."""

    sqlstate = "58000"  # system_error


class PostgresNotFound(ClusterError):
    """No PostgreSQL server binaries were found on this machine."""

    sqlstate = "58P01"  # undefined_file


class NodeUnavailable(ReplicateError):
    """A PostgreSQL node could not be reached."""

    sqlstate = "08006"  # connection_failure


class RefusedStatement(ReplicateError):
    """The SQL gate refused a statement because it would not replicate safely."""

    sqlstate = "0A000"  # feature_not_supported


class ProtocolError(ReplicateError):
    """A peer sent a message that breaks the protocol."""

    sqlstate = "08P01"  # protocol_violation

"""A pure codec for the PostgreSQL wire protocol, version 3.0 (no I/O, h11 style).

``messages`` holds the message classes; ``codec`` the decoders
(``FrontendDecoder``, ``BackendDecoder``: ``feed`` / ``next_message``), the
encoder (``encode``) and builders for the replies an interceptor sends
(``error_response``, ``row_description``, ``data_row``, ``command_complete``,
``ready_for_query``). ``replicate.runtime.relay`` is the I/O around it.
"""

from replicate.pgwire.codec import (MAX_MESSAGE_LENGTH, MAX_STARTUP_LENGTH, BackendDecoder,
                                    FrontendDecoder, command_complete, data_row, encode,
                                    error_bytes, error_response, parse_backend, parse_frontend,
                                    parse_startup, python_encoding, ready_for_query,
                                    row_description)
from replicate.pgwire.messages import *  # noqa: F401,F403 - the message classes are the API
from replicate.pgwire.messages import __all__ as _messages_all

__all__ = ["MAX_MESSAGE_LENGTH", "MAX_STARTUP_LENGTH", "BackendDecoder", "FrontendDecoder",
           "command_complete", "data_row", "encode", "error_bytes", "error_response",
           "parse_backend", "parse_frontend", "parse_startup", "python_encoding",
           "ready_for_query", "row_description", *_messages_all]

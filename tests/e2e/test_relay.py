"""The transparent relay end to end: real nodes, real proxy processes, real clients.

psql, psycopg (text, binary, pipeline, server-side prepared statements, COPY,
LISTEN/NOTIFY, cancel), md5 and SCRAM logins and pgbench go through a proxy's
port and must see exactly what a direct connection sees. The hook seam is
exercised in-process (a relay with hooks in this test's own event loop).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest

from replicate.errors import NodeUnavailable
from replicate.pgwire import codec
from replicate.pgwire import messages as m
from replicate.runtime.relay import Action, Hooks, relay_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROLES = {"md5_user": ("md5", "md5-secret"), "scram_user": ("scram-sha-256", "scram-secret")}


@pytest.fixture(scope="module")
def relayed(pg_binaries, pg_template):
    """A 1-node cluster with its proxy running, and roles that log in with md5 and SCRAM."""
    from conftest import ClusterFactory  # the shared factory (tests/conftest.py)

    factory = ClusterFactory(pg_binaries, pg_template)
    cluster = factory(1)
    node = cluster.nodes[0]
    hba = node.data_dir / "pg_hba.conf"
    # the proxy reaches its node through the Unix socket (socket_dir): `local` lines apply
    # to it, `host` lines to direct clients; both ask for the password
    lines = "".join(f"{kind} all {role} {where} {method}\n" for role, (method, _) in ROLES.items()
                    for kind, where in (("local", ""), ("host", "127.0.0.1/32")))
    hba.write_text(lines + hba.read_text())
    with psycopg.connect(node.dsn, autocommit=True) as conn:
        for role, (method, password) in ROLES.items():
            conn.execute(f"SET password_encryption = '{method}'")
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute("SELECT pg_reload_conf()")
    cluster.start_proxies()
    yield cluster
    factory.destroy_all()


def proxy_dsn(cluster, user: str = "postgres", **extra) -> str:
    proxy = cluster.proxies[0]
    more = "".join(f" {k}={v}" for k, v in extra.items())
    return f"host={proxy.host} port={proxy.port} user={user} dbname=postgres{more}"


def psql(cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_bin(cluster, "psql"), proxy_dsn(cluster), "-X", "-v",
                           "ON_ERROR_STOP=1", *args],
                          input=stdin, capture_output=True, text=True, timeout=30)


def _bin(cluster, program: str) -> str:
    return cluster.nodes[0].binaries.path(program)


# --------------------------------------------------------------------------- psql

def test_psql_multi_statement_and_copy_in_and_out(relayed, tmp_path) -> None:
    out = psql(relayed, "-At", "-c", "CREATE TABLE t_psql (a int, b text); "
               "INSERT INTO t_psql VALUES (1, 'one'), (2, 'two'); SELECT count(*) FROM t_psql")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["CREATE", "TABLE", "INSERT", "0", "2", "2"]
    src = tmp_path / "in.tsv"
    src.write_text("".join(f"{i}\tv{i}\n" for i in range(3, 1003)))
    os.chmod(tmp_path, 0o755)
    out = psql(relayed, "-c", f"\\copy t_psql FROM '{src}'")
    assert out.returncode == 0, out.stderr
    assert "COPY 1000" in out.stdout
    dst = tmp_path / "out.tsv"
    out = psql(relayed, "-c", f"\\copy (SELECT * FROM t_psql ORDER BY a) TO '{dst}'")
    assert out.returncode == 0, out.stderr
    rows = dst.read_text().splitlines()
    assert len(rows) == 1002 and rows[0] == "1\tone" and rows[-1] == "1002\tv1002"


def test_psql_sslmode_prefer_falls_back_and_require_is_refused(relayed) -> None:
    psql_bin = _bin(relayed, "psql")
    ok = subprocess.run([psql_bin, proxy_dsn(relayed, sslmode="prefer"), "-At", "-c", "SELECT 7"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.strip() == "7", ok.stderr
    refused = subprocess.run([psql_bin, proxy_dsn(relayed, sslmode="require"), "-c", "SELECT 1"],
                             capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0
    assert "SSL" in refused.stderr


def test_errors_are_the_nodes_own_sqlstate_message_and_position(relayed) -> None:
    def error_of(dsn: str):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT 1 FROMM nowhere")
            assert conn.execute("SELECT 'still here'").fetchone() == ("still here",)
            diag = info.value.diag
            return info.value.sqlstate, diag.message_primary, diag.statement_position

    via_proxy = error_of(proxy_dsn(relayed))
    assert via_proxy[0] == "42601" and via_proxy[2] == "16"
    assert via_proxy == error_of(relayed.nodes[0].dsn)


# --------------------------------------------------------------------------- psycopg

def test_psycopg_text_binary_and_large_results(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as conn:
        row = conn.execute("SELECT 1::int, 'é'::text, NULL::int, '\\x00ff'::bytea, 1.5::numeric, "
                           "now()::date = current_date").fetchone()
        assert row == (1, "é", None, b"\x00\xff", __import__("decimal").Decimal("1.5"), True)
        with conn.cursor(binary=True) as cur:
            cur.execute("SELECT %s::int8, %s::text, %s::bytea, %s::float8[]",
                        (2 ** 40, "ü", b"\x01\x00", [1.5, None]))
            assert cur.fetchone() == (2 ** 40, "ü", b"\x01\x00", [1.5, None])
        big = conn.execute("SELECT i, repeat('x', 100) FROM generate_series(1, 200000) i").fetchall()
        assert len(big) == 200000 and big[-1] == (200000, "x" * 100)
        blob = conn.execute("SELECT repeat('y', 20000000)").fetchone()[0]
        assert len(blob) == 20_000_000


def test_psycopg_pipeline_and_prepared_statements(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True, prepare_threshold=0) as conn:
        conn.execute("CREATE TABLE t_pipe (id int PRIMARY KEY, v text)")
        with conn.pipeline():
            # The SELECT gets a cursor of its own: in pipeline mode psycopg hands each result
            # to the cursor that sent the statement as it arrives, so an INSERT result read
            # after a same-cursor SELECT was sent becomes that cursor's current result, and
            # fetchone() then fails with "the last operation didn't produce records (command
            # status: INSERT 0 1)": a race in the client, seen once in CI, not in the relay.
            with conn.cursor() as cur:
                for i in range(500):
                    cur.execute("INSERT INTO t_pipe VALUES (%s, %s)", (i, f"v{i}"))
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM t_pipe")
                assert cur.fetchone() == (500,)
        with conn.cursor() as cur:
            for i in range(5):
                cur.execute("SELECT v FROM t_pipe WHERE id = %s", (i,), prepare=True)
                assert cur.fetchone() == (f"v{i}",)
        prepared = conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0]
        assert prepared >= 1
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                conn.execute("INSERT INTO t_pipe VALUES (1, 'dup')")
        assert conn.execute("SELECT count(*) FROM t_pipe").fetchone() == (500,)
        with conn.transaction():
            conn.execute("INSERT INTO t_pipe VALUES (1000, 'tx')")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


def test_psycopg_copy_in_and_out(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as conn:
        conn.execute("CREATE TABLE t_copy (a int, b text)")
        with conn.cursor() as cur:
            with cur.copy("COPY t_copy FROM STDIN") as copy:
                for i in range(20000):
                    copy.write_row((i, f"r{i}"))
            with cur.copy("COPY t_copy TO STDOUT (FORMAT binary)") as copy:
                copy.set_types(["int4", "text"])
                rows = list(copy.rows())
        assert len(rows) == 20000 and rows[123] == (123, "r123")
        with pytest.raises(ZeroDivisionError):  # psycopg sends CopyFail, the node aborts the COPY
            with conn.cursor() as cur, cur.copy("COPY t_copy FROM STDIN") as copy:
                copy.write_row((1, "x"))
                1 / 0
        assert conn.execute("SELECT count(*) FROM t_copy").fetchone() == (20000,)


def test_slow_reader_and_big_copy_in_under_backpressure(relayed) -> None:
    rows, width = 40000, 1000
    sock = _raw_connect(relayed)
    sock.settimeout(10)
    sock.sendall(codec.encode(m.StartupMessage({"user": "postgres", "database": "postgres"})))
    decoder = codec.BackendDecoder()
    seen: list = []
    while not any(isinstance(x, m.ReadyForQuery) for x in seen):
        decoder.feed(sock.recv(65536))
        seen += _drain(decoder)
    sock.sendall(codec.encode(m.Query(f"SELECT repeat('x', {width}) FROM generate_series(1, {rows})")))
    time.sleep(1.0)  # not reading: the proxy must stop reading the node, not buffer 40 MB
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as other:
        assert other.execute("SELECT 'others are served'").fetchone() == ("others are served",)
        scanner = codec.FrameScanner(b"DZ")
        got = 0
        done = False
        while not done:
            for msg, _ in scanner.feed(sock.recv(1 << 20)):
                if isinstance(msg, m.DataRow):
                    assert len(msg.values[0]) == width
                    got += 1
                else:
                    done = True
        assert got == rows
        sock.sendall(codec.encode(m.Terminate()))
        sock.close()
        other.execute("CREATE TABLE t_bigcopy (b text)")
        line = b"y" * 999 + b"\n"
        with other.cursor() as cur, cur.copy("COPY t_bigcopy FROM STDIN") as copy:
            for _ in range(30):
                copy.write(line * 1000)
        assert other.execute("SELECT count(*), sum(length(b)) FROM t_bigcopy").fetchone() == \
            (30000, 30000 * 999)


def test_notices_and_listen_notify_between_two_proxied_connections(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as listener, \
            psycopg.connect(proxy_dsn(relayed), autocommit=True) as talker:
        notices = []
        talker.add_notice_handler(lambda diag: notices.append(diag.message_primary))
        talker.execute("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        assert notices == ["hello from plpgsql"]
        listener.execute("LISTEN chan_relay")
        talker.execute("NOTIFY chan_relay, 'payload-1'")
        talker.execute("SELECT pg_notify('chan_relay', 'payload-2')")
        got = []
        for note in listener.notifies(timeout=5, stop_after=2):
            got.append((note.channel, note.payload, note.pid))
        assert [g[:2] for g in got] == [("chan_relay", "payload-1"), ("chan_relay", "payload-2")]
        assert got[0][2] == talker.info.backend_pid


def test_cancel_through_the_proxy(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(30)")
        assert time.monotonic() - started < 5
        timer.join()
        assert conn.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- authentication

@pytest.mark.parametrize("role", sorted(ROLES))
def test_password_logins_and_a_bad_password(relayed, role) -> None:
    method, password = ROLES[role]
    with psycopg.connect(proxy_dsn(relayed, user=role, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (role,)
        assert conn.info.parameter_status("server_version")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(proxy_dsn(relayed, user=role, password="wrong"))
    assert "28P01" in str(info.value) or "password authentication failed" in str(info.value)
    assert info.value.sqlstate in (None, "28P01")


# --------------------------------------------------------------------------- pgbench

def test_pgbench_simple_extended_prepared(relayed) -> None:
    pgbench = _bin(relayed, "pgbench")
    proxy = relayed.proxies[0]
    base = [pgbench, "-h", proxy.host, "-p", str(proxy.port), "-U", "postgres"]
    init = subprocess.run(base + ["-i", "-s", "1", "-q", "postgres"], capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stderr
    for mode in ("simple", "extended", "prepared"):
        run = subprocess.run(base + ["-c", "4", "-T", "2", "-M", mode, "postgres"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (mode, run.stdout, run.stderr)
        failed = re.search(r"number of failed transactions: (\d+)", run.stdout)
        assert failed is None or failed.group(1) == "0", run.stdout
        done = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
        assert done and int(done.group(1)) > 0, run.stdout


# --------------------------------------------------------------------------- hostile clients

def _raw_connect(cluster) -> socket.socket:
    proxy = cluster.proxies[0]
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_garbage_clients_are_closed_and_good_clients_keep_working(relayed) -> None:
    with psycopg.connect(proxy_dsn(relayed), autocommit=True) as good:
        # a startup packet with an absurd length
        bad = _raw_connect(relayed)
        bad.sendall(b"\x7f\xff\xff\xff" + os.urandom(60))
        reply = _read_all(bad)
        bad.close()
        decoder = codec.BackendDecoder()
        decoder.feed(reply)
        err = decoder.next_message()
        assert isinstance(err, m.ErrorResponse) and err.sqlstate == "08P01", reply
        # a valid startup, then a message with a negative length
        bad = _raw_connect(relayed)
        bad.sendall(codec.encode(m.StartupMessage({"user": "postgres", "database": "postgres"})))
        time.sleep(0.2)
        bad.sendall(b"Q" + struct.pack("!i", -7) + b"garbage")
        reply = _read_all(bad)
        bad.close()
        assert b"08P01" in reply
        # a client that sends a few bytes and hangs up
        bad = _raw_connect(relayed)
        bad.sendall(b"\0\0")
        bad.close()
        assert good.execute("SELECT 'alive'").fetchone() == ("alive",)
    with psycopg.connect(proxy_dsn(relayed)) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


def _connect_when_up(dsn: str, timeout: float = 20) -> psycopg.Connection:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_node_down_gives_the_client_an_error_and_the_proxy_stays(make_cluster) -> None:
    cluster = make_cluster(1)
    cluster.start_proxies()
    node = cluster.nodes[0]
    dsn = proxy_dsn(cluster)
    # the backend process dies without a word: the proxy says 08006
    conn = psycopg.connect(dsn, autocommit=True)
    os.kill(conn.info.backend_pid, signal.SIGKILL)
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT 1")
    assert info.value.sqlstate == "08006", info.value
    assert "connection to the PostgreSQL node behind this proxy was lost" in str(info.value)
    conn.close()
    # the node shuts down: its own FATAL 57P01 is relayed
    conn = _connect_when_up(dsn)  # after the crash above the node restarts by itself
    node.stop(mode="fast")
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT 1")
    assert info.value.sqlstate == "57P01", info.value
    conn.close()
    # the node is down: a new client is told so
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=5)
    assert "the proxy cannot reach its PostgreSQL node" in str(info.value)
    node.start()
    with psycopg.connect(dsn) as again:
        assert again.execute("SELECT 2").fetchone() == (2,)


# --------------------------------------------------------------------------- the hook seam

class Intercepting(Hooks):
    """Answers ``SELECT 'intercept'`` itself; records what it saw; runs a query via exchange."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.sessions = []

    async def on_frontend(self, session, message):
        self.seen.append(type(message).__name__)
        self.sessions.append(session)
        if isinstance(message, m.Query) and message.sql == "SELECT 'intercept'":
            await session.wait_idle()
            replies = await session.exchange(m.Query("SELECT current_setting('TimeZone')"))
            tz = next(r for r in replies if isinstance(r, m.DataRow)).values[0]
            session.write_client(codec.row_description([("intercepted", 25)]))
            session.write_client(codec.data_row([b"yes " + tz]))
            session.write_client(codec.command_complete("SELECT 1"))
            session.write_client(codec.ready_for_query(session.transaction_status))
            await session.drain()
            return Action.HANDLED
        if isinstance(message, m.Query) and message.sql == "SELECT 'boom'":
            raise NodeUnavailable("the engine went away")
        if isinstance(message, m.Query) and message.sql == "SELECT 'refuse'":
            session.write_client(codec.error_response("ERROR", "0A000", "refused by the hook",
                                                      hint="a hint"))
            session.write_client(codec.ready_for_query(session.transaction_status))
            return Action.HANDLED
        return Action.FORWARD


class _InProcessRelay:
    """A relay with hooks served from this test's own event loop (the proxy processes have none)."""

    def __init__(self, backend: tuple[str, int], hooks) -> None:
        self.backend = backend
        self.hooks = hooks

    async def __aenter__(self) -> str:
        async def accept(reader, writer):
            try:
                first = await reader.readexactly(8)
                await relay_client(first, reader, writer, backend=self.backend, hooks=self.hooks)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_hooks_see_messages_and_can_answer_themselves(relayed) -> None:
    backend = ("127.0.0.1", relayed.nodes[0].port)
    hooks = Intercepting()

    async def run() -> None:
        async with _InProcessRelay(backend, hooks) as dsn:
            dsn += " application_name=hooked"
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute("SET TimeZone = 'Asia/Tokyo'")
                cur = await conn.execute("SELECT 'intercept'")
                assert await cur.fetchone() == ("yes Asia/Tokyo",)
                with pytest.raises(psycopg.errors.FeatureNotSupported):
                    await conn.execute("SELECT 'refuse'")
                cur = await conn.execute("SELECT %s::int", (41,))
                assert await cur.fetchone() == (41,)
                async with conn.transaction():
                    await conn.execute("SELECT 1")
                    session = hooks.sessions[-1]
                    assert session.transaction_status == "T"
                async with conn.pipeline():
                    curs = [await conn.execute("SELECT %s::int", (i,)) for i in range(50)]
                assert [(await c.fetchone())[0] for c in curs] == list(range(50))
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as doomed:
                with pytest.raises(psycopg.OperationalError) as info:
                    await doomed.execute("SELECT 'boom'")
                assert info.value.sqlstate == "08006"
                assert "the engine went away" in str(info.value)

    asyncio.run(run())
    session = hooks.sessions[0]  # the first connection's
    assert session.user == "postgres" and session.database == "postgres"
    assert session.application_name == "hooked"
    assert session.parameters["TimeZone"] == "Asia/Tokyo"
    assert session.parameters["standard_conforming_strings"] == "on"
    assert session.backend_pid and session.backend_secret
    assert session.pending == 0 and session.transaction_status == "I"
    assert {"Query", "Parse", "Bind", "Describe", "Execute", "Sync"} <= set(hooks.seen)


def test_relay_through_a_unix_socket_falls_back_in_order_and_names_what_failed(relayed) -> None:
    node = relayed.nodes[0]
    socket = (str(node.socket_dir), node.port)
    missing = ("/nonexistent-replicate-socket-dir", node.port)
    tcp = ("127.0.0.1", node.port)

    async def client_addr(backend, hooks) -> object:
        async with _InProcessRelay(backend, hooks) as dsn:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute("SELECT inet_client_addr()")
                return (await cur.fetchone())[0]

    async def run() -> None:
        # inet_client_addr() is NULL for a Unix-socket connection, the address over TCP
        assert await client_addr(socket, None) is None
        assert await client_addr(socket, Hooks()) is None
        assert await client_addr((missing, tcp), None) is not None  # the next address, as libpq
        assert await client_addr((socket, tcp), Counting()) is None
        async with _InProcessRelay(missing, None) as dsn:
            with pytest.raises(psycopg.OperationalError) as info:
                await psycopg.AsyncConnection.connect(dsn, connect_timeout=5)
        assert "the proxy cannot reach its PostgreSQL node" in str(info.value)
        assert f"/nonexistent-replicate-socket-dir/.s.PGSQL.{node.port}" in str(info.value)

    asyncio.run(run())


class Narrowing(Hooks):
    """Wants only Query messages: the rest are relayed undecoded (``session.hooked``)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.sessions = []

    def on_frontend(self, session, message):
        session.hooked = frozenset(b"Q")
        self.sessions.append(session)
        self.seen.append((type(message).__name__, session.in_batch))
        return Action.FORWARD


def test_hooks_can_narrow_the_messages_they_see(relayed) -> None:
    backend = ("127.0.0.1", relayed.nodes[0].port)
    hooks = Narrowing()

    async def run() -> None:
        async with _InProcessRelay(backend, hooks) as dsn:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                cur = await conn.execute("SELECT 1")
                assert await cur.fetchone() == (1,)
                for i in range(5):
                    cur = await conn.execute("SELECT %s::int", (i,), prepare=True)
                    assert await cur.fetchone() == (i,)
                async with conn.pipeline():
                    curs = [await conn.execute("SELECT %s::int", (i,)) for i in range(20)]
                assert [(await c.fetchone())[0] for c in curs] == list(range(20))
                cur = await conn.execute("SELECT 'after'")
                assert await cur.fetchone() == ("after",)
                session = hooks.sessions[-1]
                assert session.pending == 0 and not session.in_batch

    asyncio.run(run())
    # the first message decides; after it only Queries reach the hook, never inside a batch
    assert {name for name, _ in hooks.seen[1:]} == {"Query"}
    assert not any(in_batch for _, in_batch in hooks.seen)


class PassingRaw(Hooks):
    """Lets Bind, Describe, Execute and Sync pass undecoded (``pass_raw``), except a Bind
    that mentions ``refused``; records what each path saw."""

    def __init__(self, refused: bytes) -> None:
        self.refused = refused
        self.raw: list[tuple[str, bool]] = []      # (type code, session.in_batch)
        self.decoded: list[str] = []
        self.refusals = 0

    def pass_raw(self, session, code, data, start, end):
        assert codec.MAX_MESSAGE_LENGTH >= end - start >= 5 and data[start] == code
        if code == ord("B") and self.refused in data[start:end]:
            self.refusals += 1
            return False
        if code in b"BDES":
            self.raw.append((chr(code), session.in_batch))
            return True
        return False

    def on_frontend(self, session, message):
        self.decoded.append(type(message).__name__)
        return Action.FORWARD


def test_hooks_can_pass_messages_undecoded(relayed) -> None:
    backend = ("127.0.0.1", relayed.nodes[0].port)
    hooks = PassingRaw(b"_pg3_1")  # psycopg's second prepared statement

    async def run() -> None:
        async with _InProcessRelay(backend, hooks) as dsn:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                for i in range(3):  # prepared as _pg3_0, then Bind/Describe/Execute/Sync
                    cur = await conn.execute("SELECT %s::int", (i,), prepare=True)
                    assert await cur.fetchone() == (i,)
                raw_before = len(hooks.raw)
                hooks.decoded.clear()
                for i in range(3):  # prepared as _pg3_1: its Binds are refused
                    cur = await conn.execute("SELECT %s::int + 100", (i,), prepare=True)
                    assert await cur.fetchone() == (i + 100,)
                # a refused Bind goes to on_frontend decoded, asked once (also when it
                # started a chunk); the messages after it are still offered to pass_raw first
                assert hooks.decoded.count("Bind") == 3 and "Execute" not in hooks.decoded
                assert hooks.refusals == 3
                after = [code for code, _ in hooks.raw[raw_before:]]
                assert after.count("B") == 0 and after.count("E") == 3
                async with conn.pipeline():
                    curs = [await conn.execute("SELECT %s::int", (i,), prepare=True)
                            for i in range(10)]
                assert [(await c.fetchone())[0] for c in curs] == list(range(10))

    asyncio.run(run())
    # a prepared execution: in_batch as before each message, like on_frontend sees it
    assert ("B", False) in hooks.raw and ("E", True) in hooks.raw and ("S", True) in hooks.raw
    assert sum(1 for code, _ in hooks.raw if code == "E") >= 12


class Counting(Hooks):
    """A hook that decides at once (no awaitable): the fast path."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def on_frontend(self, session, message):
        name = type(message).__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return Action.FORWARD


def test_synchronous_hooks_under_pgbench_and_hostile_messages(relayed, tmp_path) -> None:
    backend = ("127.0.0.1", relayed.nodes[0].port)
    hooks = Counting()
    pgbench = _bin(relayed, "pgbench")
    script = tmp_path / "select.sql"
    script.write_text("\\set x random(1, 1000)\nSELECT :x::int AS x;\n")
    os.chmod(tmp_path, 0o755)

    async def run() -> None:
        async with _InProcessRelay(backend, hooks) as dsn:
            port = str(dsn.split("port=")[1].split()[0])
            for mode in ("simple", "extended"):
                proc = await asyncio.create_subprocess_exec(
                    pgbench, "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-n", "-f", str(script),
                    "-c", "2", "-t", "200", "-M", mode, "postgres",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                assert proc.returncode == 0, (out, err)
            # a malformed Query (no NUL) after a good startup: FATAL 08P01, connection closed
            reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
            writer.write(codec.encode(m.StartupMessage({"user": "postgres", "database": "postgres"})))
            decoder = codec.BackendDecoder()
            while not any(isinstance(x, m.ReadyForQuery) for x in _drain(decoder)):
                decoder.feed(await asyncio.wait_for(reader.read(65536), 5))
            writer.write(b"Q" + struct.pack("!i", 12) + b"SELECT 1")
            reply = await asyncio.wait_for(reader.read(), 5)
            decoder = codec.BackendDecoder()
            decoder.feed(reply)
            errors = [x for x in _drain(decoder) if isinstance(x, m.ErrorResponse)]
            assert errors and errors[0].sqlstate == "08P01", reply
            writer.close()

    asyncio.run(run())
    assert hooks.counts["Query"] >= 400 and hooks.counts["Bind"] >= 400
    assert hooks.counts["Sync"] >= 400


def _drain(decoder) -> list:
    out = []
    while (msg := decoder.next_message()) is not None:
        out.append(msg)
    return out


def test_gssenc_request_is_answered_n(relayed) -> None:
    sock = _raw_connect(relayed)
    sock.sendall(codec.encode(m.GSSENCRequest()))
    assert sock.recv(1) == b"N"
    sock.sendall(codec.encode(m.SSLRequest()))
    assert sock.recv(1) == b"N"
    sock.sendall(codec.encode(m.StartupMessage({"user": "postgres", "database": "postgres"})))
    decoder = codec.BackendDecoder()
    seen: list = []
    while not any(isinstance(x, m.ReadyForQuery) for x in seen):
        decoder.feed(sock.recv(65536))
        seen += _drain(decoder)
    assert seen[0] == m.Authentication(m.AUTH_OK)
    assert any(isinstance(x, m.BackendKeyData) for x in seen)
    sock.sendall(codec.encode(m.Terminate()))
    sock.close()


class AnsweringExecute(Hooks):
    """Answers the Execute of ``SELECT 'mine'`` itself, after settle(), as the interception
    of a replicated write does; counts the relay's writes to the client per round trip."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.portal_sql: dict[str, str] = {}

    def on_frontend(self, session, message):
        transport = session._client.transport
        if not getattr(transport, "counted", False):
            original = transport.write

            def write(data, original=original):
                self.writes.append(bytes(data))
                original(data)
            transport.write, transport.counted = write, True
        if isinstance(message, m.Parse):
            self.portal_sql[message.name] = message.sql
        if isinstance(message, m.Execute) and "'mine'" in self.portal_sql.get("", ""):
            return self._answer(session)
        return Action.FORWARD

    async def _answer(self, session) -> Action:
        assert not await session.settle()
        session.write_client(codec.data_row([b"mine"]))
        session.write_client(codec.command_complete("SELECT 1"))
        return Action.HANDLED


def test_a_hooks_answer_goes_out_with_what_the_node_sent_meanwhile(relayed) -> None:
    backend = ("127.0.0.1", relayed.nodes[0].port)
    hooks = AnsweringExecute()

    async def run() -> None:
        async with _InProcessRelay(backend, hooks) as dsn:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                hooks.writes.clear()
                cur = await conn.execute("SELECT 'mine'::text WHERE %s", [True])
                assert await cur.fetchall() == [("mine",)]

    asyncio.run(run())
    # Parse/Bind/Describe replies and the hook's rows in one write, ReadyForQuery in another
    # (it comes from the node after the Sync); without holding, 1 write more per reply burst
    assert len(hooks.writes) == 2, [w[:1] for w in hooks.writes]
    assert hooks.writes[0][:1] == b"1" and b"mine" in hooks.writes[0]
    assert hooks.writes[1][:1] == b"Z"

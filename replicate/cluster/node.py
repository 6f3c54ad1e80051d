"""One local PostgreSQL server: create, start, stop, crash, pause.

A node lives in its own directory::

    <root>/data          the PostgreSQL data directory (PGDATA)
    <root>/sock          private unix-socket directory (mode 0700)
    <root>/postgres.log  the server log

It listens on 127.0.0.1 only, with trust authentication, the C locale and
UTF-8, so that every node sorts and compares text identically. When we run as
root, PostgreSQL (which refuses to run as root) runs as the ``postgres`` OS
user and owns the node directory; otherwise it runs as the current user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from replicate.cluster.binaries import PgBinaries
from replicate.errors import ClusterError

SERVER_USER = "postgres"
SUPERUSER = "postgres"


def running_as_root() -> bool:
    return os.geteuid() == 0


def server_account() -> pwd.struct_passwd | None:
    """The OS account PostgreSQL must run as, or None for the current user."""
    if not running_as_root():
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no {SERVER_USER!r} OS user to run PostgreSQL as",
            hint="PostgreSQL refuses to run as root: create the user "
                 "(`useradd --system postgres`) or run replicate as an ordinary user") from None


def run_as_server(cmd: list[str], *, timeout: float, check: bool = True,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as the server account, capturing its output."""
    account = server_account()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    kwargs: dict = {}
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env["HOME"] = account.pw_dir
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                cwd=str(cwd) if cwd else "/", **kwargs)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{Path(cmd[0]).name} did not finish within {timeout:.0f} s") from None
    if check and result.returncode != 0:
        raise ClusterError(f"{Path(cmd[0]).name} failed with exit code {result.returncode}",
                           detail=(result.stderr or result.stdout).strip()[-2000:])
    return result


def chown_to_server(path: Path) -> None:
    account = server_account()
    if account is None:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, account.pw_uid, account.pw_gid)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), account.pw_uid, account.pw_gid)


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces
        fields = stat[stat.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()[0].decode()


def _processes_in(directory: Path) -> list[int]:
    """Every process whose working directory is ``directory`` (PostgreSQL chdirs into PGDATA)."""
    target = str(directory.resolve())
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == target:
                pids.append(int(entry))
        except OSError:
            continue
    return pids


@dataclass(slots=True)
class LocalNode:
    """A PostgreSQL server in ``root``, listening on ``127.0.0.1:port``."""

    name: str
    root: Path
    port: int
    binaries: PgBinaries

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={SUPERUSER}"

    def dsn_for(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={SUPERUSER}"

    # -- creation ---------------------------------------------------------

    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def create(self, *, template: Path | None = None, fsync: bool = True) -> None:
        """initdb (or copy an initdb'd template) and write this node's settings."""
        if self.exists():
            raise ClusterError(f"node {self.name}: {self.data_dir} already holds a data directory")
        self.root.mkdir(parents=True, exist_ok=True)
        if template is not None:
            shutil.copytree(template, self.data_dir, symlinks=True)
        else:
            init_template(self.binaries, self.data_dir)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on" if fsync else "off",
            "full_page_writes": "on" if fsync else "off",
            "max_connections": "100",
            "shared_buffers": "64MB",
            "max_prepared_transactions": "0",
            "log_line_prefix": "'%m [%p] '",
        }
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# --- written by replicate (local node %s) ---\n" % self.name)
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        chown_to_server(self.root)
        os.chmod(self.data_dir, 0o700)
        os.chmod(self.socket_dir, 0o700)

    # -- process state ----------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid if it is alive, else None (a stale pid file counts as dead)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
        except (OSError, ValueError):
            return None
        state = _proc_state(pid)
        if state is None or state == "Z":
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"postgres" in cmdline else None

    def status(self) -> str:
        """``running``, ``paused`` (SIGSTOPped) or ``stopped``."""
        pid = self.pid()
        if pid is None:
            return "stopped"
        return "paused" if _proc_state(pid) == "T" else "running"

    def is_running(self) -> bool:
        return self.pid() is not None

    def _tree(self, pid: int) -> list[int]:
        children = _proc_children()
        tree, todo = [], [pid]
        while todo:
            current = todo.pop()
            tree.append(current)
            todo.extend(children.get(current, []))
        return tree

    # -- lifecycle ---------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections. No-op if running."""
        if self.status() == "paused":
            self.resume()
            return
        if self.is_running():
            return
        if not self.exists():
            raise ClusterError(f"node {self.name}: no data directory at {self.data_dir}")
        self._reap_orphans()
        # The pid file of a killed postmaster may name a zombie not yet reaped, which
        # PostgreSQL would take for a live server; pid() already proved it dead.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            result = run_as_server(
                [self.binaries.path("pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                 "-D", str(self.data_dir), "-l", str(self.log_file)],
                timeout=timeout + 10, check=False)
            if result.returncode == 0:
                return
            # A backend of a killed postmaster may still hold the shared memory for a moment.
            if time.monotonic() > deadline or "still in use" not in self.log_tail():
                raise ClusterError(f"node {self.name} did not start",
                                   detail=self.log_tail(),
                                   hint=f"see the server log {self.log_file}")
            self._reap_orphans()
            time.sleep(0.2)

    def stop(self, *, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server (``fast`` or ``immediate``); a dead or paused one is handled too."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown stop mode {mode!r}")
        if self.status() == "paused":
            self.resume()
        if self.is_running():
            result = run_as_server(
                [self.binaries.path("pg_ctl"), "stop", "-w", "-t", str(int(timeout)),
                 "-m", mode, "-D", str(self.data_dir)], timeout=timeout + 10, check=False)
            if result.returncode != 0 and self.is_running():
                self.kill(signal.SIGKILL)
        self._reap_orphans()

    def kill(self, sig: int = signal.SIGKILL, *, whole_tree: bool = False) -> int:
        """Send ``sig`` to the postmaster (and, with ``whole_tree``, every backend)."""
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"node {self.name} is not running")
        targets = self._tree(pid) if whole_tree else [pid]
        for target in targets:
            try:
                os.kill(target, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:  # return only once they are really dead
            deadline = time.monotonic() + 10
            while any(_proc_state(t) not in (None, "Z") for t in targets):
                if time.monotonic() > deadline:
                    raise ClusterError(f"node {self.name}: SIGKILL did not end {targets}")
                time.sleep(0.01)
        return pid

    def pause(self) -> None:
        """SIGSTOP the postmaster and all its backends: the node hangs, sockets stay open."""
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"node {self.name} is not running")
        os.kill(pid, signal.SIGSTOP)  # first, so that it forks no new backend meanwhile
        for target in self._tree(pid):
            try:
                os.kill(target, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        # SIGSTOP is delivered asynchronously: return once the postmaster is seen stopped, so
        # that status() says "paused" right away (bounded: a zombie never shows T)
        deadline = time.monotonic() + 2.0
        while _proc_state(pid) not in ("T", None) and time.monotonic() < deadline:
            time.sleep(0.005)

    def resume(self) -> None:
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"node {self.name} is not running")
        for target in self._tree(pid):
            try:
                os.kill(target, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def restart(self, *, timeout: float = 60.0) -> None:
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def _reap_orphans(self, timeout: float = 10.0) -> None:
        """Kill backends left behind by a dead postmaster, so that no process outlives us."""
        if self.is_running():
            return
        deadline = time.monotonic() + timeout
        while True:
            pids = _processes_in(self.data_dir)
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise ClusterError(f"node {self.name}: processes {pids} would not exit")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def init_template(binaries: PgBinaries, data_dir: Path) -> None:
    """Run initdb into ``data_dir`` with the settings every replicate node shares."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    chown_to_server(data_dir.parent)
    run_as_server([binaries.path("initdb"), "-D", str(data_dir), "-U", SUPERUSER,
                   "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"],
                  timeout=120)

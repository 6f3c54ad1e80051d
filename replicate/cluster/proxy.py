"""One local ``replicate proxy`` process, as ``replicate up`` runs it.

It runs detached (its own session, so Ctrl-C in a terminal does not reach
it), logs to ``<node>/proxy.log`` and records its pid in ``<node>/proxy.pid``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from replicate.errors import ClusterError


@dataclass(slots=True)
class LocalProxy:
    name: str
    root: Path
    config_path: Path
    host: str
    port: int

    @property
    def pid_file(self) -> Path:
        return self.root / "proxy.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "proxy.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except (OSError, ValueError):
            return None
        if stat[stat.rfind(b")") + 2:].split()[0] == b"Z":
            return None
        # an empty command line is a child of ours caught between fork and exec
        return pid if not cmdline or (b"replicate" in cmdline and b"proxy" in cmdline) else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self) -> bool:
        """Start the proxy unless it runs; True if it was started."""
        if self.is_running():
            return False
        # Ctrl-C between starting the process and recording its pid would leak the process:
        # hold SIGINT/SIGTERM until the pid file is written.
        held = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            with open(self.log_file, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "replicate", "proxy", "--config",
                     str(self.config_path), "--node", self.name],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    cwd=str(self.root))
            self.pid_file.write_text(f"{proc.pid}\n")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
        return True

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                raise ClusterError(f"proxy {self.name} exited", detail=self.log_tail(),
                                   hint=f"see {self.log_file}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise ClusterError(f"proxy {self.name} is not listening on "
                                       f"{self.host}:{self.port}") from None
                time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> int:
        pid = self.pid()
        if pid is None:
            raise ClusterError(f"proxy {self.name} is not running")
        os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self._wait_gone(pid, 10)
        return pid

    def stop(self, *, timeout: float = 10.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stat = Path(f"/proc/{pid}/stat").read_bytes()
            except OSError:
                return True
            if stat[stat.rfind(b")") + 2:].split()[0] == b"Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return True
            time.sleep(0.02)
        return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

"""Process inspection for end-to-end tests: what is still running under a directory."""

import os
from pathlib import Path


def processes_under(directory: Path) -> list[tuple[int, str]]:
    """Live processes whose command line or working directory lies under ``directory``."""
    target = str(directory.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            if stat[stat.rfind(b")") + 2:].split()[0] == b"Z":
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                cwd = ""
        except OSError:
            continue
        if target in cmdline or cwd.startswith(target):
            found.append((int(entry), cmdline))
    return found

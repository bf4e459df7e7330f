"""The processes `lensops stack` starts: spawned, recorded, waited for, and stopped only if still its own.

A service is recorded as its pid and its command line. It counts as running, and `stop` touches
it, only while that pid still runs that command line: a pid the system has given to another
process since is someone else's, and left alone.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from .core.errors import CheckFailed

READY_TIMEOUT_S = 90


def record(pid: int, url: str, log: Path, **extra) -> dict:
    return {"pid": pid, "url": url, "log": str(log), "cmdline": psutil.Process(pid).cmdline(), **extra}


def alive(service: dict) -> bool:
    """The recorded pid runs and runs the recorded command (a reused pid is someone else's process)."""
    try:
        process = psutil.Process(service["pid"])
        return process.status() != psutil.STATUS_ZOMBIE and process.cmdline() == service["cmdline"]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def terminate(service: dict, timeout: float = 30) -> None:
    process = psutil.Process(service["pid"])
    family = [process, *process.children(recursive=True)]  # mlflow's workers, Ray's raylet and GCS
    for p in family:
        quietly(p.send_signal, signal.SIGTERM)
    _, left = psutil.wait_procs(family, timeout=timeout)
    for p in left:
        quietly(p.kill)


def quietly(call: Callable[..., None], *args) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):  # it ended on its own meanwhile
        call(*args)


def spawn(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with log.open("ab") as out:  # the child keeps its own handle
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # fmt: skip


def check_call(command: list[str], log: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise CheckFailed(f"{Path(command[0]).name if command[0] != 'runuser' else command[4]} failed "
                          f"(exit {result.returncode}): {(result.stderr or result.stdout).strip()[-1500:]} "
                          f"(log: {log})")  # fmt: skip


def wait(ready: Callable[[], bool], what: str, log: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            state = f"exited with {process.returncode}" if process.returncode is not None else "did not answer"
            raise CheckFailed(f"{what} {state} within {READY_TIMEOUT_S}s; the end of {log}:\n{tail}")
        time.sleep(0.3)


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port(state: dict, service: str) -> int:
    """The port this service had last time when it is free (stable addresses for a team), else any free one."""
    for candidate in (state["ports"].get(service), 0):
        if candidate is None:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is no conflict
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            state["ports"][service] = s.getsockname()[1]
            return state["ports"][service]
    raise AssertionError("unreachable: port 0 always binds")

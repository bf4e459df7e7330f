"""Opening the MLflow store so that serving, drift, a retraining and a tune sweep can share it at once.

MLflow reaches its store two ways, and each needs something different to stay correct under
concurrent writers:

- SQLite (the embedded default): lensops puts the file in WAL journal mode, once (the mode is kept
  in the file). In the default rollback journal a reader blocks every writer and a writer every
  reader; with WAL, readers (serving's alias polling, `lensops models`) run beside one writer.
  MLflow already gives each session a 20 s busy timeout. A write that still meets "database is
  locked" (a read transaction upgraded to a write while another process writes) is retried with
  backoff by `retry_locked` around lensops's own registry writes, since MLflow does not retry it.
- An MLflow server (PostgreSQL behind it, as `lensops stack up` runs): nothing to add. MLflow's
  REST client retries 429 and 5xx answers with backoff, and PostgreSQL locks rows, not the file.

WAL needs shared memory between the processes, so the SQLite file must sit on a local disk, not
a network file system; a team sharing one store across machines runs an MLflow server
(`lensops stack up` starts one locally). `LENSOPS_SQLITE_WAL=0` leaves a file's journal mode as it
is (`benchmarks/store_concurrency.py` uses it to measure the default journal beside WAL).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
from pathlib import Path

import tenacity


@functools.lru_cache(maxsize=16)
def client(tracking_uri: str):
    """An MLflow client naming `tracking_uri` for both tracking and the registry (a SQLite file in WAL mode)."""
    import mlflow

    if (path := sqlite_path(tracking_uri)) and os.environ.get("LENSOPS_SQLITE_WAL", "1") != "0":
        use_wal(path)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI; None for any other store (or an in-memory database)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def use_wal(path: Path) -> None:
    """Put the SQLite file in WAL mode (kept in the file; an empty file becomes MLflow's database)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")


def _is_locked(error: BaseException) -> bool:
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


retry_locked = tenacity.retry(
    retry=tenacity.retry_if_exception(_is_locked),
    stop=tenacity.stop_after_attempt(6),
    wait=tenacity.wait_exponential_jitter(initial=0.2, max=5),
    reraise=True,
)
"""Retry a write that SQLite answered with "database is locked": up to 6 tries over about 10 s."""

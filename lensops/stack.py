"""`lensops stack`: on one machine, the services a team runs, so the team path can be tried and tested.

    PostgreSQL (MLflow's backend store) ─┐
    S3-compatible object store (moto) ───┼─► mlflow server ◄── MLFLOW_TRACKING_URI
      ├── s3://lensops/mlflow  artifacts ┘
      └── s3://lensops/dvc     the DVC remote ◄── LENSOPS_DVC_REMOTE, AWS_ENDPOINT_URL

Every service binds to 127.0.0.1 on a free port. `up` writes what it started (pids, command lines,
ports) to `state.json` and the variables to export to `stack.env` (mode 0600: it holds the
database password), both in the stack folder (default `.lensops/stack` under the project).
`down` stops exactly the processes recorded there, checking each pid still runs the recorded
command, so it never stops anything it did not start. The database folder stays, so `up` again
finds every run and version.

moto keeps objects in memory. So that nothing is lost between `down` and `up`, `down` first
copies every object to `s3/` in the stack folder and `up` puts them back. A moto process that is
killed loses what was written since it started: this stack is for trying and testing the team
path on one machine; a team's real one is PostgreSQL and S3 (or GCS, Azure) run by someone.

No Ray head: Ray's client turns 127.0.0.1 into the machine's network address, so a head that
drivers can join must listen on a network interface, and whoever reaches a Ray head runs code on
it. On one machine each command starts its own local Ray; a cluster is joined with RAY_ADDRESS.

PostgreSQL refuses to run as root. Run as root, `up` runs `initdb` and `pg_ctl` as the user
`postgres` (through `runuser`) on a folder that user owns.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from . import processes
from .core.errors import UsageError

BUCKET = "lensops"
PG_USER, PG_DATABASE = "lensops", "mlflow"


def default_dir(root: Path) -> Path:
    return root / ".lensops" / "stack"


class Stack:
    """The stack recorded in one folder: start, stop and describe its services."""

    def __init__(self, folder: Path, log: Callable[[str], None] = print) -> None:
        self.dir = folder.resolve()
        self.log = log
        self.state_file = self.dir / "state.json"
        self.env_file = self.dir / "stack.env"

    # --- what is recorded ---------------------------------------------------------------------
    def state(self) -> dict:
        if not self.state_file.is_file():
            return {"services": {}, "env": {}}
        return json.loads(self.state_file.read_text())

    def _save(self, state: dict) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)
        os.replace(tmp, self.state_file)  # a crash between two writes leaves the old state, never half a file

    def status(self) -> dict[str, dict]:
        """Each recorded service with `running` (its pid alive with the recorded command) and its address."""
        return {name: {**s, "running": processes.alive(s)} for name, s in self.state()["services"].items()}

    def running(self) -> bool:
        services = self.status()
        return bool(services) and all(s["running"] for s in services.values())

    # --- up -----------------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        """Start what is not running yet; returns the environment to export."""
        if self.running():
            self.log(f"the stack in {self.dir} is already running")
            return self.state()["env"]
        missing = [m for m in ("psycopg2", "moto", "boto3") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(f"lensops stack needs {', '.join(missing)}: pip install 'lensops[stack]'")
        self.down(quiet=True)  # a half-started or crashed stack: stop what is left, then start clean
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)  # PostgreSQL's own user has to reach its folder inside
        secret = self._secret()
        state: dict = {"services": {}, "env": {}, "ports": self.state().get("ports", {})}
        try:
            pg = self._postgres(state, secret)
            s3 = self._object_store(state, secret)
            tracking = self._mlflow(state, secret, pg, s3)
            env = {
                "MLFLOW_TRACKING_URI": tracking,
                "AWS_ACCESS_KEY_ID": "lensops",
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_ENDPOINT_URL": s3,  # boto3 and DVC's S3 remote find the object store through this
                "MLFLOW_S3_ENDPOINT_URL": s3,
                "LENSOPS_DVC_REMOTE": f"s3://{BUCKET}/dvc",
            }
            state["env"] = env
            self._save(state)
        except BaseException:
            self._save(state)
            self.down(quiet=True)
            raise
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        self.env_file.chmod(0o600)
        return env

    def _secret(self) -> str:
        path = self.dir / "secret"
        if not path.is_file():
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()

    def _postgres(self, state: dict, password: str) -> str:
        data, port = self.dir / "postgres", processes.free_port(state, "postgres")
        as_postgres = _as_postgres()
        if not (data / "PG_VERSION").is_file():
            shutil.rmtree(data, ignore_errors=True)  # an initdb cut short
            data.mkdir()
            pwfile = self.dir / "pgpass.tmp"
            pwfile.write_text(password + "\n")
            if as_postgres:
                shutil.chown(data, "postgres")
                shutil.chown(pwfile, "postgres")
            try:
                initdb = [_pg_bin("initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile),
                          "--auth", "scram-sha-256", "-E", "UTF8", "--no-locale"]  # fmt: skip
                processes.check_call([*as_postgres, *initdb], self.dir / "initdb.log")
            finally:
                pwfile.unlink(missing_ok=True)
        options = f"-h 127.0.0.1 -p {port} -k ''"  # TCP on loopback only; no Unix socket to place
        log = self.dir / "postgres.log"
        if as_postgres:
            log.touch()
            shutil.chown(log, "postgres")
        processes.check_call(
            [*as_postgres, _pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"], log
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        state["services"]["postgres"] = processes.record(pid, f"postgresql://127.0.0.1:{port}", log, data=str(data))
        self._save(state)
        url = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}"
        _create_database(url)
        return f"postgresql+psycopg2://{PG_USER}:{password}@127.0.0.1:{port}/{PG_DATABASE}"

    def _object_store(self, state: dict, secret: str) -> str:
        port = processes.free_port(state, "objectstore")
        log = self.dir / "objectstore.log"
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        process = processes.spawn(command, log)
        state["services"]["objectstore"] = processes.record(process.pid, f"http://127.0.0.1:{port}", log)
        self._save(state)
        url = f"http://127.0.0.1:{port}"
        processes.wait(lambda: processes.http_ok(f"{url}/moto-api/"), "the object store", log, process)
        s3 = _s3(url, secret)
        s3.create_bucket(Bucket=BUCKET)
        restored = _restore(s3, self.dir / "s3")
        if restored:
            self.log(f"object store: {restored} objects restored from {self.dir / 's3'}")
        return url

    def _mlflow(self, state: dict, secret: str, backend: str, s3: str) -> str:
        port = processes.free_port(state, "mlflow")
        log = self.dir / "mlflow.log"
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "lensops",
            "AWS_SECRET_ACCESS_KEY": secret,
            "MLFLOW_S3_ENDPOINT_URL": s3,
            "AWS_ENDPOINT_URL": s3,
            "MLFLOW_BACKEND_STORE_URI": backend,
        }  # fmt: skip (in the environment: the password stays out of ps)
        env.pop("MLFLOW_TRACKING_URI", None)
        mlflow = str(Path(sys.executable).parent / "mlflow")
        command = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", str(_server_workers()),
                   "--artifacts-destination", f"s3://{BUCKET}/mlflow"]  # fmt: skip
        process = processes.spawn(command, log, env)
        url = f"http://127.0.0.1:{port}"
        state["services"]["mlflow"] = processes.record(process.pid, url, log)
        self._save(state)
        processes.wait(lambda: processes.http_ok(f"{url}/health"), "mlflow server", log, process)
        return url

    # --- down ---------------------------------------------------------------------------------
    def down(self, quiet: bool = False, keep_objects: bool = True) -> list[str]:
        """Stop every recorded service that still runs its recorded command; returns their names.

        `keep_objects=False` skips copying the object store's contents out first (for a stack
        whose folder is removed next, as the tests' is).
        """
        state = self.state()
        services = state["services"]
        stopped = []
        for name in ("mlflow", "objectstore", "postgres"):  # users of a service stop before it
            service = services.get(name)
            if not service or not processes.alive(service):
                continue
            if name == "objectstore" and keep_objects:
                saved = self._snapshot(service["url"])
                if not quiet:
                    self.log(f"object store: {saved} objects kept in {self.dir / 's3'}")
            if name == "postgres":
                stop = [_pg_bin("pg_ctl"), "-D", service["data"], "-m", "fast", "-w", "stop"]
                processes.check_call([*_as_postgres(), *stop], Path(service["log"]))
            else:
                processes.terminate(service)
            stopped.append(name)
            if not quiet:
                self.log(f"stopped {name} (pid {service['pid']})")
        if self.state_file.is_file():  # the ports are kept: `up` again gives the same addresses when it can
            self._save({"services": {}, "env": {}, "ports": state.get("ports", {})})
        return stopped

    def _snapshot(self, url: str) -> int:
        """Copy every object to `s3/` (written beside, then swapped in, so a failure keeps the last copy)."""
        s3 = _s3(url, self._secret())
        target, final = self.dir / "s3.new", self.dir / "s3"
        shutil.rmtree(target, ignore_errors=True)
        objects = [
            (bucket["Name"], obj["Key"])
            for bucket in s3.list_buckets().get("Buckets", [])
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"])
            for obj in page.get("Contents", [])
        ]

        def fetch(bucket: str, key: str) -> None:
            path = target / bucket / key
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(path))

        _each(fetch, objects)
        target.mkdir(parents=True, exist_ok=True)
        if final.exists():
            final.rename(self.dir / "s3.old")
        target.rename(final)
        shutil.rmtree(self.dir / "s3.old", ignore_errors=True)
        return len(objects)


# --- helpers ----------------------------------------------------------------------------------
def _as_postgres() -> list[str]:
    """PostgreSQL refuses root: run its tools as `postgres` when lensops runs as root."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("runuser"):
        raise UsageError("lensops stack runs as root, and PostgreSQL refuses root; runuser is missing to switch user")
    return ["runuser", "-u", "postgres", "--"]


def _server_workers() -> int:
    """MLflow server workers: one per two cores, 1 to 4 (each is a process holding all of MLflow)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise UsageError(f"PostgreSQL's {name} was not found on PATH or under /usr/lib/postgresql/*/bin: "
                         "install the PostgreSQL server (Debian: apt install postgresql)")  # fmt: skip
    return found


def _create_database(url: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{url}/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    finally:
        connection.close()


def _s3(url: str, secret: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id="lensops", aws_secret_access_key=secret,
                        region_name="us-east-1")  # fmt: skip


def _restore(s3, folder: Path) -> int:
    if not folder.is_dir():
        return 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    for bucket in {p.relative_to(folder).parts[0] for p in files} - {BUCKET}:
        s3.create_bucket(Bucket=bucket)

    def put(path: Path) -> None:
        bucket, *key = path.relative_to(folder).parts
        s3.upload_file(str(path), bucket, "/".join(key))

    _each(put, [(p,) for p in files])
    return len(files)


def _each(call: Callable[..., None], items: list[tuple]) -> None:
    """`call(*item)` for every item on 8 threads (boto3 clients are thread-safe); the first error is raised."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(call, *item) for item in items]:
            future.result()

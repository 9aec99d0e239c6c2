"""A private PostgreSQL server for tests and benchmarks: Debian's binaries, a fresh cluster in a
temporary folder, listening on 127.0.0.1 only, stopped and removed at the end.

PostgreSQL refuses to run as root; run as root (as CI does), the cluster belongs to the `postgres`
system user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

DATABASE = "evolvd"


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL binaries on this machine (`make test` installs Debian's package)."""


TOOLS = ("initdb", "pg_ctl", "createdb")


def postgres_bin_dir() -> Path:
    """The folder with initdb, pg_ctl and createdb: Debian's versioned folders (newest first), then PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    on_path = [str(Path(found).parent) for found in [shutil.which("pg_ctl")] if found]
    for folder in [*debian, *on_path]:
        if all((Path(folder) / tool).exists() for tool in TOOLS):
            return Path(folder)
    raise PostgresUnavailableError(
        "PostgreSQL is not installed: `apt-get install postgresql` (make test does)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, durable: bool = False) -> None:
        """`durable`: fsync and synchronous commit on, as in production (benchmarks); off by default,
        where a test's database is thrown away with the server."""
        self.durable = durable
        self.bin = postgres_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="evolvd-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self._user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, timeout_s: float = 120) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self._user, "-E", "UTF8", "--no-sync")
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, DATABASE)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def new_database(self) -> str:
        """A fresh, empty database on this server: its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self._user, name)
        return f"postgresql://{self._user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout_s=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stored_events(url: str) -> tuple[int, int]:
    """(rows, distinct ids) in a buffer database's events table; (0, 0) before a member created it."""
    import psycopg

    try:
        with psycopg.connect(url) as con:
            row = con.execute(b"SELECT count(*), count(DISTINCT id) FROM events").fetchone()
    except psycopg.errors.UndefinedTable:
        return 0, 0
    assert row is not None
    return int(row[0]), int(row[1])

"""A PostgreSQL cluster on a mounted volume, for the benchmarks that run a real database
(bench/replication.py, bench/database.py): Debian's binaries, as the ``postgres`` user,
unix socket only."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from pathlib import Path


class Postgres:
    """A PostgreSQL cluster on a mounted volume, as the ``postgres`` user, unix socket
    only; stopped (its postmaster killed by pid if need be) by :meth:`close`."""

    def __init__(self, root: Path, port: int = 5432) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(bins[-1])
        self.root = root
        self.sockdir = root / f"pgsock-{port}"  # and the server's log: one per cluster
        self.port = str(port)
        self.data: Path | None = None
        self.env = {**os.environ, "LC_ALL": "C"}

    def _as_postgres(self, tool: str, *args: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args]

    def run(self, tool: str, *args: str) -> str:
        """A server tool (initdb, pg_ctl) as the postgres user (the server refuses root)."""
        done = subprocess.run(self._as_postgres(tool, *args), capture_output=True, text=True,
                              env=self.env, timeout=1800, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr[-2000:]}")
        return done.stdout

    def setup(self, mnt: Path, *settings: str) -> None:
        """initdb on ``mnt``/pgdata (``mnt`` under our root) and start the server;
        ``settings`` are ``name=value`` server settings (``-c``)."""
        if not mnt.is_relative_to(self.root):
            raise ValueError(f"{mnt} is not under {self.root}")
        extra = " ".join(f"-c {s}" for s in settings)
        self.sockdir.mkdir(parents=True, exist_ok=True)
        for path in (mnt, self.sockdir):  # the postgres user walks down to both from our root
            for p in [path, *path.parents]:
                p.chmod(p.stat().st_mode | 0o011)
                if p == self.root:
                    break
        shutil.chown(self.sockdir, "postgres", "postgres")
        shutil.chown(mnt, "postgres", "postgres")
        self.data = mnt / "pgdata"
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        options = f"-c listen_addresses='' -k {self.sockdir} -p {self.port} {extra}".rstrip()
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.sockdir / "server.log"), "-w",
                 "-t", "120", "-o", options, "start")

    def pgbench(self, *args: str) -> subprocess.Popen[str]:
        """pgbench itself (our child: its pid is the one to kill), as the database user
        postgres over the socket (trust)."""
        argv = [str(self.bin / "pgbench"), *args, "-h", str(self.sockdir), "-p", self.port, "-U",
                "postgres", "postgres"]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        if self.data is None:
            return
        pidfile = self.data / "postmaster.pid"
        subprocess.run(self._as_postgres("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w",
                                         "stop"), capture_output=True, timeout=120, check=False)
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)  # only if it did not stop: that exact postmaster
        self.data = None

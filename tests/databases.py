"""Real metadata databases for tests: a PostgreSQL and a MariaDB server of
their own, on a free loopback port, from Debian's packages (installed with
apt-get when missing), each with a database `mlmd` and a user `conveyor`
whose password is `PASSWORD`.

    with Postgres(workdir) as db:
        db.uri        # postgresql://conveyor@127.0.0.1:PORT/mlmd
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from tests.portable import accepts, die_with_parent, free_ports

__all__ = ["Postgres", "MariaDB", "PASSWORD", "apt_install"]

PASSWORD = "conveyor-db-secret"
START_TIMEOUT = 90.0


def apt_install(package: str) -> None:
    """Installs a Debian package (CI machines start without the servers and browser tests need)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], check=True, env=env,
                   capture_output=True)


class _Server:
    scheme = ""

    def __init__(self) -> None:
        self.port = free_ports(1)[0]
        # Outside pytest's temp dir, which only root may enter: PostgreSQL runs as its own user.
        self.dir = tempfile.mkdtemp(prefix=f"conveyor-{self.scheme}-")
        os.chmod(self.dir, 0o755)
        self.proc: Any = None

    @property
    def uri(self) -> str:
        return f"{self.scheme}://conveyor@127.0.0.1:{self.port}/mlmd"

    def _start(self, argv: list[str], log: str) -> None:
        self._log = open(os.path.join(self.dir, log), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent())
        deadline = time.monotonic() + START_TIMEOUT
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                with open(self._log.name, errors="replace") as f:
                    tail = f.read()[-3000:]
                self.__exit__()
                raise RuntimeError(f"{argv[0]} did not start on port {self.port}:\n{tail}")
            time.sleep(0.2)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres(_Server):
    scheme = "postgresql"

    def __enter__(self) -> Postgres:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            apt_install("postgresql")
            found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        bindir = os.path.dirname(found[-1])
        data = os.path.join(self.dir, "data")
        shutil.chown(self.dir, "postgres")

        def as_postgres(*argv: str) -> list[str]:
            return ["runuser", "-u", "postgres", "--", *argv]

        subprocess.run(as_postgres(f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                                   "--auth-host=scram-sha-256"), check=True, capture_output=True)
        self._start(as_postgres(f"{bindir}/postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
                                "-c", "listen_addresses=127.0.0.1"), "postgres.log")
        sql = f"CREATE USER conveyor PASSWORD '{PASSWORD}'; CREATE DATABASE mlmd OWNER conveyor;"
        for statement in sql.split("; "):
            subprocess.run(as_postgres(f"{bindir}/psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                                       "-v", "ON_ERROR_STOP=1", "-c", statement.rstrip(";")),
                           check=True, capture_output=True)
        return self


class MariaDB(_Server):
    scheme = "mysql"

    def __enter__(self) -> MariaDB:
        if not shutil.which("mariadbd") and not os.path.exists("/usr/sbin/mariadbd"):
            apt_install("mariadb-server")
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        data = os.path.join(self.dir, "data")
        socket = os.path.join(self.dir, "mysqld.sock")
        subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={data}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"], check=True, capture_output=True)
        self._start([server, "--no-defaults", "--user=root", f"--datadir={data}", f"--port={self.port}",
                     "--bind-address=127.0.0.1", f"--socket={socket}", f"--pid-file={self.dir}/mysqld.pid",
                     "--skip-log-bin"], "mariadb.log")
        sql = (f"CREATE DATABASE mlmd; CREATE USER 'conveyor'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'; "
               f"GRANT ALL ON mlmd.* TO 'conveyor'@'127.0.0.1';")
        subprocess.run(["mariadb", "--no-defaults", "-uroot", f"--socket={socket}", "-e", sql], check=True,
                       capture_output=True)
        return self

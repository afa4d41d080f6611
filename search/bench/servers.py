"""Throwaway PostgreSQL, Redis and MLflow servers for the benchmarks and the tests, started from
Debian's binaries.

Each server is our own: a fresh data directory, a free port on 127.0.0.1 (never 5432 or 6379,
whatever already runs on this machine), listening on loopback only, stopped when the context
manager exits. `tests/install-services.sh` (part of README's test command) installs the Debian
packages (`postgresql`, `redis-server`) when they are missing.

PostgreSQL refuses to run as root: when the tests run as root, initdb and the server run as the
`postgres` system user that Debian's package creates (Popen's user=/group=). Its private directory
(data, Unix socket) is then made in the first of tmp_dir, the system temp dir or /tmp that this
user can reach; pytest's tmp_path is under /tmp/pytest-of-root, which is mode 0700.

Server logs stay in tmp_dir (`postgres-PORT.log`, `redis-PORT.log`); data directories are
removed on exit. Server processes get a parent-death signal, so that a test run that is killed
does not leave servers behind: start and stop a server from the same thread (a server started
from a thread that ends is stopped with it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
INSTALL_HINT = "bash tests/install-services.sh installs it (apt-get: postgresql, redis-server)"

PG_ROLE = "searcher"
PG_DATABASE = "optuna"
PG_ADMIN = "postgres"  # bootstrap superuser: only reached through the Unix socket (trust)
PG_SYSTEM_USER = "postgres"  # the unprivileged user that runs PostgreSQL when we are root
PG_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "shared_buffers": "16MB",
}
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; PostgreSQL adds "/.s.PGSQL.PORT"


# ---------------------------------------------------------------------------------------------
# helpers


def server_env() -> dict[str, str]:
    """The environment a server starts with: this one, less the mark of the test that happens
    to start it (tests/conftest.py stops what a test leaves running; a server is a fixture's,
    and outlives the test that first asked for it or restarted it)."""
    return {k: v for k, v in os.environ.items() if k != "FINETUNE_SEARCH_TEST_PROCESS"}


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if port in (5432, 6379):  # cannot happen with ephemeral ports, but never use those
        return free_port()
    return port


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get `sig` when our thread exits (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(sig), 0, 0, 0)

    return preexec


def _stop_process(proc: subprocess.Popen[Any], signals: list[int], timeout_s: float) -> None:
    """Send each signal in turn, waiting up to timeout_s after each; SIGKILL as the last resort."""
    for sig in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
            return
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=timeout_s)


# ---------------------------------------------------------------------------------------------
# finding the binaries


def _version_key(name: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return None
    return tuple(int(part) for part in name.split("."))


def postgres_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/VERSION/bin that holds initdb and postgres."""
    root = Path("/usr/lib/postgresql")
    found = []
    if root.is_dir():
        for child in root.iterdir():
            key = _version_key(child.name)
            bindir = child / "bin"
            if key is None:
                continue
            if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
                found.append((key, bindir))
    return max(found)[1] if found else None


def redis_binary() -> Path | None:
    which = shutil.which("redis-server")
    if which:
        return Path(which)
    fallback = Path("/usr/bin/redis-server")
    return fallback if os.access(fallback, os.X_OK) else None


def _run_as() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root; None when we run it as ourselves."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(PG_SYSTEM_USER)


def postgres_available() -> str | None:
    """None when postgres_server() can run here, else why not."""
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, postgres under /usr/lib/postgresql/*/bin/) "
            f"are missing; {INSTALL_HINT}"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            return (
                f"running as root, and PostgreSQL refuses root, but there is no "
                f"{PG_SYSTEM_USER!r} system user to run it as; {INSTALL_HINT}"
            )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg package (psycopg 3) is missing: pip install -e '.[dev]'"
    return None


def redis_available() -> str | None:
    """None when redis_server() can run here, else why not."""
    if redis_binary() is None:
        return f"redis-server is missing (not on PATH, not in /usr/bin); {INSTALL_HINT}"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python package is missing: pip install -e '.[dev]'"
    return None


def _reachable(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether `account` may traverse every directory from / down to path."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in [path, *path.parents]:
        try:
            st = os.stat(directory)
        except OSError:
            return False
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _private_dir(tmp_dir: Path, prefix: str, account: pwd.struct_passwd | None) -> Path:
    """A fresh directory for the server's data and socket, owned by the account running it."""
    candidates = [tmp_dir, Path(tempfile.gettempdir()), Path("/tmp")]
    for base in candidates:
        base = base.resolve()
        if len(str(base)) + len(prefix) + 10 > SOCKET_PATH_MAX:
            continue
        if account is not None and not _reachable(base, account):
            continue
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
        return path
    raise RuntimeError(
        f"no directory for a server that {account.pw_name if account else 'we'} can reach "
        f"with a short enough Unix socket path; tried {', '.join(map(str, candidates))}"
    )


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(repr=False)
class PostgresServer:
    """A PostgreSQL server of our own. url carries the password: see masked_url for messages."""

    url: str
    password: str
    port: int
    data_dir: Path = field(default=Path())
    socket_dir: Path = field(default=Path())
    log_path: Path = field(default=Path())
    bindir: Path = field(default=Path())
    max_connections: int = 100
    _account: pwd.struct_passwd | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"PostgresServer(url={self.masked_url!r}, port={self.port}, pid={self.pid})"

    @property
    def masked_url(self) -> str:
        return self.url.replace(f":{self.password}@", ":***@")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _popen_kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in server_env().items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        kwargs: dict[str, Any] = {"env": env, "cwd": self.socket_dir, "stdin": subprocess.DEVNULL}
        if self._account is not None:
            env["HOME"] = str(self.socket_dir)
            kwargs.update(user=self._account.pw_uid, group=self._account.pw_gid, extra_groups=[])
        return kwargs

    def admin_connect(self) -> Any:
        """A psycopg connection as the bootstrap superuser through the Unix socket."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=PG_ADMIN,
            dbname="postgres",
            connect_timeout=2,
            autocommit=True,
        )

    def start(self) -> None:
        """Start the server (again) on the same port and data directory, and wait until ready."""
        import psycopg

        if self.running:
            return
        command = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        settings = dict(PG_SETTINGS, unix_socket_directories=str(self.socket_dir),
                        max_connections=str(self.max_connections))
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        self._log = open(self.log_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal(signal.SIGQUIT),  # immediate shutdown
            **self._popen_kwargs(),
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(
                    f"postgres exited with status {code} while starting on port {self.port}; "
                    f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            try:
                self.admin_connect().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"postgres did not accept connections on port {self.port} within "
                        f"{READY_TIMEOUT_S:.0f} s; log {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: disconnects clients, checkpoints), then immediate, then kill."""
        if self._proc is not None:
            _stop_process(self._proc, [signal.SIGINT, signal.SIGQUIT], STOP_TIMEOUT_S)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _initdb(server: PostgresServer) -> None:
    admin_password = secrets.token_hex(16)  # required by initdb for password auth; never used
    pwfile = server.socket_dir / "admin-password"
    pwfile.write_text(admin_password + "\n")
    if server._account is not None:
        os.chown(pwfile, server._account.pw_uid, server._account.pw_gid)
    command = [
        str(server.bindir / "initdb"),
        "-D", str(server.data_dir),
        "-U", PG_ADMIN,
        f"--pwfile={pwfile}",
        "--auth-local=trust",  # socket directory is 0700: only the server's user and root
        "--auth-host=scram-sha-256",  # TCP: password required
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]  # fmt: skip
    with open(server.log_path, "ab") as log:
        result = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, timeout=120, **server._popen_kwargs()
        )
    pwfile.unlink()
    if result.returncode != 0:
        raise RuntimeError(
            f"initdb failed with status {result.returncode}; log {server.log_path}:\n"
            f"{_log_tail(server.log_path)}"
        )


def _create_role_and_database(server: PostgresServer) -> None:
    from psycopg import sql

    with server.admin_connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(PG_ROLE), sql.Literal(server.password)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(PG_DATABASE), sql.Identifier(PG_ROLE)
            )
        )


@contextlib.contextmanager
def postgres_server(tmp_dir: Path, *, max_connections: int = 100
                    ) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server on 127.0.0.1:free port, with role `searcher` (password auth over
    TCP) owning database `optuna`; stopped and its data removed on exit."""
    reason = postgres_available()
    if reason is not None:
        raise RuntimeError(reason)
    bindir = postgres_bindir()
    assert bindir is not None
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    account = _run_as()
    private = _private_dir(tmp_dir, "pg-", account)
    port = free_port()
    password = f"secret-pw-{secrets.token_hex(8)}"
    server = PostgresServer(
        url=f"postgresql://{PG_ROLE}:{password}@127.0.0.1:{port}/{PG_DATABASE}",
        password=password,
        port=port,
        data_dir=private / "data",
        socket_dir=private,
        log_path=tmp_dir / f"postgres-{port}.log",
        bindir=bindir,
        max_connections=max_connections,
        _account=account,
    )
    try:
        _initdb(server)
        server.start()
        _create_role_and_database(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(private, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Redis


@dataclass
class RedisServer:
    """A Redis server of our own, without persistence."""

    url: str
    port: int
    work_dir: Path = field(default=Path())
    log_path: Path = field(default=Path())
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self.running else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        import redis

        if self.running:
            return
        binary = redis_binary()
        assert binary is not None
        command = [
            str(binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.work_dir),
            "--daemonize", "no",
            "--logfile", "",  # stdout, which goes to log_path
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # closed in stop()
        self._proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.work_dir,
            start_new_session=True,
            preexec_fn=_parent_death_signal(signal.SIGTERM),
            env=server_env(),
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise RuntimeError(
                    f"redis-server exited with status {code} while starting on port "
                    f"{self.port}; log {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            client = redis.Redis(
                host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=2
            )
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer on port {self.port} within "
                        f"{READY_TIMEOUT_S:.0f} s; log {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, [signal.SIGTERM], STOP_TIMEOUT_S)
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(tmp_dir: Path) -> Iterator[RedisServer]:
    """A fresh Redis server on 127.0.0.1:free port, database 0; stopped on exit."""
    reason = redis_available()
    if reason is not None:
        raise RuntimeError(reason)
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    work_dir = Path(tempfile.mkdtemp(prefix=f"redis-{port}-", dir=tmp_dir))
    server = RedisServer(
        url=f"redis://127.0.0.1:{port}/0",
        port=port,
        work_dir=work_dir,
        log_path=tmp_dir / f"redis-{port}.log",
    )
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# MLflow tracking server


@dataclass
class MlflowServer:
    """`mlflow server` of our own on a SQLite backend, serving artifacts from a folder."""

    url: str  # http://127.0.0.1:PORT
    port: int
    log_path: Path
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process(self._proc, [signal.SIGTERM, signal.SIGKILL], STOP_TIMEOUT_S)
            # The server's own children (uvicorn, job consumers) outlive it otherwise, busy on
            # the CPU the rest of the tests need: end its whole session.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc = None


@contextlib.contextmanager
def mlflow_server(tmp_dir: Path, *, backend_store_uri: str | None = None
                  ) -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1:free port (backend: a new SQLite file unless given, with
    an artifact destination in tmp_dir), ready to answer; stopped on exit."""
    import urllib.request

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    backend = backend_store_uri or f"sqlite:///{tmp_dir / 'mlflow-server.db'}"
    server = MlflowServer(url=f"http://127.0.0.1:{port}", port=port,
                          log_path=tmp_dir / f"mlflow-{port}.log")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(port), "--backend-store-uri", backend,
               "--artifacts-destination", str(tmp_dir / "mlflow-artifacts"),
               "--workers", "1"]
    with open(server.log_path, "ab") as log:
        server._proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_parent_death_signal(signal.SIGTERM),
            # MLflow 3's server starts job consumers (huey, seven processes) by default: the
            # tests use none of those jobs.
            env={**server_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            if server._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited while starting; log "
                                   f"{server.log_path}:\n{_log_tail(server.log_path)}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer within 90 s; log "
                                       f"{server.log_path}:\n{_log_tail(server.log_path)}"
                                       ) from None
                time.sleep(0.3)
        yield server
    finally:
        server.stop()

"""The throwaway PostgreSQL and Redis servers of search/bench/servers.py: ours, on loopback,
stoppable.

A missing binary fails these tests (it does not skip them): CI must run them, and README's test
command installs the Debian packages (tests/install-services.sh).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from search.bench.servers import (
    PostgresServer,
    RedisServer,
    postgres_available,
    postgres_server,
    redis_available,
    redis_server,
)

REPO = Path(__file__).resolve().parent.parent


def require(reason: str | None) -> None:
    if reason is not None:
        pytest.fail(f"{reason}. Run `bash tests/install-services.sh`, which installs it.")


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on port, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def assert_loopback_only(port: int) -> None:
    assert port not in (5432, 6379)
    assert listening_addresses(port) == {"0100007F"}, "should listen on 127.0.0.1 only"
    # Another loopback address reaches this host but no socket bound to it or to 0.0.0.0.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie nobody reaped has stopped too


def wait_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_postgres_server_is_ours_with_password_auth_and_restarts(tmp_path: Path) -> None:
    import psycopg

    require(postgres_available())
    with postgres_server(tmp_path) as pg:
        assert isinstance(pg, PostgresServer)
        url = urlsplit(pg.url)
        assert (url.scheme, url.hostname, url.port) == ("postgresql", "127.0.0.1", pg.port)
        assert (url.username, url.password, url.path) == ("searcher", pg.password, "/optuna")
        assert pg.password not in repr(pg) and ":***@" in repr(pg)
        assert_loopback_only(pg.port)
        pid = pg.pid
        assert pid is not None
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres user
            assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("postgres").pw_uid

        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            # The backend serving this TCP connection is a child of our postmaster.
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert parent_pid(backend) == pid
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SELECT current_user, current_database()").fetchone() == (
                "searcher",
                "optuna",
            )
        with pg.admin_connect() as conn:
            assert conn.execute("SHOW data_directory").fetchone() == (str(pg.data_dir),)
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            conn.execute("CREATE TABLE kept (value text)")
            conn.execute("INSERT INTO kept VALUES ('before restart')")

        # TCP requires the password: a wrong one and none at all are refused.
        wrong = pg.url.replace(pg.password, "not-the-password")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(wrong, connect_timeout=5)
        no_password = pg.url.replace(f":{pg.password}@", "@")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(no_password, connect_timeout=5, passfile=str(tmp_path / "none"))

        pg.restart()
        assert pg.pid != pid
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT value FROM kept").fetchall() == [("before restart",)]

        pg.stop()
        pg.stop()  # idempotent
        assert wait_gone(pid)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2)
        pg.start()
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            assert conn.execute("SELECT count(*) FROM kept").fetchone() == (1,)
        last_pid = pg.pid
        assert last_pid is not None
    assert wait_gone(last_pid)
    assert not pg.data_dir.exists() and not pg.socket_dir.exists()
    assert pg.log_path.parent == tmp_path and "ready to accept connections" in (
        pg.log_path.read_text()
    )
    shutil.rmtree(tmp_path)  # nothing of the server's is left in the way


def test_redis_server_is_ours_and_stops(tmp_path: Path) -> None:
    import redis

    require(redis_available())
    with redis_server(tmp_path) as server:
        assert isinstance(server, RedisServer)
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert_loopback_only(server.port)
        client = redis.Redis.from_url(server.url, socket_timeout=5)
        assert client.info("server")["process_id"] == server.pid
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("key", "value")
        assert client.get("key") == b"value"
        client.close()
        pid = server.pid
        assert pid is not None
        server.stop()
        assert wait_gone(pid)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(server.url, socket_connect_timeout=2).ping()
    assert not server.work_dir.exists()
    shutil.rmtree(tmp_path)


def test_servers_stop_on_error_in_block(tmp_path: Path) -> None:
    require(redis_available())
    with pytest.raises(KeyError), redis_server(tmp_path) as server:
        pid = server.pid
        raise KeyError("boom")
    assert pid is not None and wait_gone(pid)


CHILD = """
import json, sys, time
from pathlib import Path
from search.bench.servers import postgres_server, redis_server
with postgres_server(Path(sys.argv[1])) as pg, redis_server(Path(sys.argv[1])) as r:
    print(json.dumps({"pg": pg.pid, "redis": r.pid, "pg_dir": str(pg.socket_dir)}), flush=True)
    time.sleep(60)
"""


def test_servers_die_with_a_killed_test_process(tmp_path: Path) -> None:
    require(postgres_available())
    require(redis_available())
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        started = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    try:
        assert wait_gone(started["pg"]), "postgres outlived the killed test process"
        assert wait_gone(started["redis"]), "redis-server outlived the killed test process"
    finally:
        shutil.rmtree(started["pg_dir"], ignore_errors=True)  # nobody was left to remove it

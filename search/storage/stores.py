"""Where a search keeps its state: the embedded default under mlruns/, or the URLs given."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from search.core.errors import UsageError, first_line
from search.core.urls import SQLITE, mask_text, mask_url, scheme, sqlite_file

MLRUNS = Path("mlruns")
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


@dataclass(frozen=True)
class Stores:
    storage: str  # Optuna storage URL or journal file path
    tracking_uri: str  # as the user gave it (or the default), for messages
    client_uri: str  # what MlflowClient gets: SQLite paths made absolute
    artifact_location: str | None  # for a new experiment; None lets the tracking server decide
    cache_dir: Path | None  # on-disk caches (pretrained backbones); None when not writable
    checkpoint_dir: Path | None = None  # trials' per-epoch checkpoints; None when not writable
    log_dir: Path | None = None  # processes' own logs (the MLflow writer's); None: not writable


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"cannot write to {folder}/ ({e.strerror or e}): run from a folder you can write to, "
            "or give --storage and --tracking-uri"
        ) from None


def resolve(*, storage: str | None, tracking_uri: str | None) -> Stores:
    """Fill in the defaults under ./mlruns and check what can be checked before any trial."""
    if storage is None or tracking_uri is None:
        _check_writable(MLRUNS)
    tracking_uri = tracking_uri or DEFAULT_TRACKING_URI
    if scheme(tracking_uri) not in TRACKING_SCHEMES:
        raise UsageError(
            f"unsupported tracking URI {mask_url(tracking_uri)!r}: MLflow 3.13+ has no file "
            "store; use sqlite:///PATH/mlflow.db, postgresql://..., or http://HOST:PORT"
        )
    artifact_location = None
    client_uri = tracking_uri
    if (file := sqlite_file(tracking_uri)) is not None:
        if file in ("", ":memory:"):
            raise UsageError(f"tracking URI {tracking_uri!r} names no database file")
        database = Path(file)
        _check_writable(database.parent)
        # A local artifact root beside the database, as the embedded default keeps it.
        artifact_location = (database.parent / "artifacts").resolve().as_uri()
        # MLflow caches its store per URI string: a relative sqlite:///mlruns/... would keep
        # pointing at the first folder's database when the working directory changes.
        query = tracking_uri.partition("?")[1:]
        client_uri = SQLITE + str(database.resolve()) + "".join(query)
    cache = MLRUNS / "cache"
    cache_dir = cache if _writable(MLRUNS) else None
    return Stores(
        storage=storage or str(MLRUNS / "optuna.journal"),
        tracking_uri=tracking_uri,
        client_uri=client_uri,
        artifact_location=artifact_location,
        cache_dir=cache_dir,
        checkpoint_dir=(MLRUNS / "checkpoints").absolute() if cache_dir is not None else None,
        log_dir=(MLRUNS / "logs").absolute() if cache_dir is not None else None,
    )


# Database tracking stores probed before a search opens anything: their drivers (psycopg,
# PyMySQL) take connect_timeout, a bounded wait on a host that does not answer.
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql")
CONNECT_TIMEOUT_S = 10


def check_tracking_store(tracking_uri: str) -> None:
    """Refuse, in one line and at once, a tracking database or server that does not answer.

    MLflow tries to create its engine 10 times over about 100 s and logs the driver's whole
    message each time (mlflow.store.db.utils, no option to change it): a wrong host, port or
    password read as a long hang under a wall of warnings. One connection, with a timeout,
    says it now; a server that answers is left to MLflow.
    """
    kind = scheme(tracking_uri)
    if kind in ("http", "https"):
        _check_tracking_server(tracking_uri)
        return
    if kind not in DATABASE_SCHEMES:
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(
            tracking_uri, poolclass=NullPool,
            connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
    except ImportError as e:
        raise UsageError(f"tracking URI {mask_url(tracking_uri)!r} needs a missing package: "
                         f"{e}") from None
    except Exception as e:  # any driver's connection or parse error
        raise UsageError(f"cannot open tracking store {mask_url(tracking_uri)!r}: "
                         f"{mask_text(first_line(e), tracking_uri)} (check the URL and that the "
                         "server is reachable)") from None


def _check_tracking_server(tracking_uri: str) -> None:
    """An MLflow server that cannot be reached is refused in one line. MLflow's client retries
    a refused connection with backoff for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES); any
    answer at all, an error page included, means a server is there and is left to MLflow."""
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.netloc.rpartition("@")[2]  # credentials, if any, are not the probe's
    health = urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health",
                                      "", ""))
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (OSError, ValueError) as e:  # refused, unreachable, timed out, a malformed URL
        reason = getattr(e, "reason", None) or e
        raise UsageError(f"cannot reach tracking server {mask_url(tracking_uri)!r}: "
                         f"{mask_text(first_line(reason), tracking_uri)} (check the URL and "
                         "that `mlflow server` is running there)") from None


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def ui_command(tracking_uri: str, experiment_id: str | None = None) -> str:
    """How to open the MLflow UI on this store (password masked), on the experiment's runs
    when its id is given. The link names the model-training view: MLflow 3.17's UI opens an
    experiment on its GenAI overview until its sidebar switch says otherwise, whatever the
    experiment's kind tag."""
    runs = (f"/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            if experiment_id is not None else "")
    if scheme(tracking_uri) in ("http", "https"):
        return f"open {mask_url(tracking_uri).rstrip('/')}{runs} in a browser"
    command = f"mlflow ui --backend-store-uri {mask_url(tracking_uri)}"
    return f"{command}, then open http://127.0.0.1:5000{runs}" if runs else command

from __future__ import annotations

import pytest

from search.core.urls import mask_text, mask_url, scheme, sqlite_file


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://user:secret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("mysql+pymysql://u:p@h/d", "mysql+pymysql://u:***@h/d"),
        ("http://alice:s3cr3t@mlflow.example.com:5000/api",
         "http://alice:***@mlflow.example.com:5000/api"),
        ("https://alice:s3cr3t@mlflow.example.com", "https://alice:***@mlflow.example.com"),
        ("postgresql://u:pa:ss@h/d", "postgresql://u:***@h/d"),  # ':' inside the password
        ("postgresql://u:p%40ss@h/d", "postgresql://u:***@h/d"),  # percent-encoded '@'
        ("postgresql://host/db?user=u&password=hunter2&sslmode=require",
         "postgresql://host/db?user=u&password=***&sslmode=require"),
        ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=***"),
        ("postgresql://h/d?PASSWORD=hunter2", "postgresql://h/d?PASSWORD=***"),
        ("postgresql://h/d?sslmode=require&pwd=hunter2", "postgresql://h/d?sslmode=require&pwd=***"),
        ("postgresql://user:secret@host/db?password=other",
         "postgresql://user:***@host/db?password=***"),
    ],
)
def test_mask_url_hides_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:5000",
        "http://127.0.0.1:5000/api/2.0",
        "https://mlflow.example.com/path?x=1",
        "postgresql://user@host/db",  # a user but no password
        "sqlite:///tmp/optuna.db",
        "file:///tmp/mlruns",
        "./journal.log",
        "mlruns",
    ],
)
def test_mask_url_leaves_urls_without_credentials_alone(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize("url", [None, ""])
def test_mask_url_of_nothing_is_empty(url: str | None) -> None:
    assert mask_url(url) == ""


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("postgresql://user:hunter2@db.example.com/optuna", "hunter2"),
        ("redis://:r3d1s-pw@cache:6379/0", "r3d1s-pw"),
        ("mysql+pymysql://u:my.sql_pw@h/d", "my.sql_pw"),
        ("http://alice:s3cr3t@mlflow.example.com:5000", "s3cr3t"),
        ("postgresql://h/d?user=u&password=q-pass-9", "q-pass-9"),
    ],
)
def test_mask_text_removes_the_password_everywhere(url: str, secret: str) -> None:
    message = (
        f"could not connect to {url}: authentication with password '{secret}' failed; "
        f"retrying with {secret}\n{secret}"
    )
    masked = mask_text(message, url)
    assert secret not in masked
    assert masked.count("***") >= 3
    assert masked.startswith("could not connect to ")
    assert "authentication with password '***' failed" in masked


def test_mask_text_with_several_urls() -> None:
    storage = "postgresql://u:first-pw@h/d"
    tracking = "http://a:second-pw@m:5000"
    text = "storage first-pw, tracking second-pw"
    assert mask_text(text, storage, tracking) == "storage ***, tracking ***"


@pytest.mark.parametrize("url", [None, "", "http://localhost:5000", "sqlite:///x.db"])
def test_mask_text_without_secrets_changes_nothing(url: str | None) -> None:
    text = "connection refused: http://localhost:5000 (sqlite:///x.db)"
    assert mask_text(text, url) == text
    assert mask_text(text) == text


@pytest.mark.parametrize(
    ("url", "kind", "file"),
    [
        ("mlruns/optuna.journal", "", None),  # a path: the journal file
        ("/abs/optuna.journal", "", None),
        ("sqlite:///mlruns/mlflow.db", "sqlite", "mlruns/mlflow.db"),
        ("sqlite:////abs/optuna.db?timeout=30", "sqlite", "/abs/optuna.db"),
        ("SQLite:///Mixed.db", "sqlite", "Mixed.db"),
        ("sqlite:///:memory:", "sqlite", ":memory:"),
        ("sqlite://", "sqlite", ""),  # no file named
        ("postgresql+psycopg2://u:p@h/db", "postgresql", None),
        ("postgres://h/db", "postgres", None),
        ("mysql+pymysql://u:p@h/d", "mysql", None),
        ("rediss://:p@h:6380/0", "rediss", None),
        ("http://localhost:5000", "http", None),
    ],
)
def test_scheme_and_sqlite_file(url: str, kind: str, file: str | None) -> None:
    assert scheme(url) == kind
    assert sqlite_file(url) == file


def test_the_review_line_links_the_study_runs_with_the_password_masked() -> None:
    from search.storage.stores import ui_command

    runs = "/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_command("sqlite:///mlruns/mlflow.db", "7") == (
        f"mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db, then open "
        f"http://127.0.0.1:5000{runs}")
    assert ui_command("http://u:secret@host:5000/", "7") == (
        f"open http://u:***@host:5000{runs} in a browser")
    assert ui_command("sqlite:///x.db") == "mlflow ui --backend-store-uri sqlite:///x.db"

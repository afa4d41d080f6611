"""Every kind of Optuna storage search.storage.schemes declares, checked the same way: its URLs
find it, it is opened as its entry says (its heartbeat, its engine's options), a local one
opens for real, a server that does not answer is one line with the password masked, a reader
creates none of its files, and README.md's `--storage` table has its row.

A new kind needs its example URL in EXAMPLES below, and its README row (which
test_the_readme_table_has_one_row_a_kind prints)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage

from search.core.cli import store_parser
from search.core.errors import UsageError
from search.core.urls import mask_url
from search.storage import optuna_storage, reading, schemes
from search.storage.heartbeat import HeartbeatJournalStorage, HeartbeatRDBStorage
from search.storage.optuna_storage import open_storage, unavailable
from search.storage.schemes import SCHEMES, Scheme
from search.storage.stores import MLRUNS

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pw-4Fq9"

# One URL of each kind, by Scheme.key: {tmp} is the test's folder; a server's is on a port
# where nothing listens (9), with a password, which no message may show.
EXAMPLES = {
    "journal": "{tmp}/optuna.journal",
    "sqlite": "sqlite:///{tmp}/optuna.db",
    "postgresql": f"postgresql://searcher:{PASSWORD}@127.0.0.1:9/optuna",
    "mysql": f"mysql://searcher:{PASSWORD}@127.0.0.1:9/optuna",
    "redis": f"redis://:{PASSWORD}@127.0.0.1:9/0",
}

every_kind = pytest.mark.parametrize("kind", SCHEMES, ids=lambda kind: kind.key)


def example(kind: Scheme, folder: Path) -> str:
    return EXAMPLES[kind.key].format(tmp=folder)


def test_every_kind_has_an_example_here() -> None:
    assert set(EXAMPLES) == {kind.key for kind in SCHEMES}


def test_keys_and_url_schemes_belong_to_one_kind_each() -> None:
    keys = [kind.key for kind in SCHEMES]
    url_schemes = [s for kind in SCHEMES for s in kind.url_schemes]
    assert len(set(keys)) == len(keys) and len(set(url_schemes)) == len(url_schemes)
    assert all(s == s.lower() for s in url_schemes)  # as search.core.urls.scheme() gives them


def test_the_default_is_the_journal_file_path() -> None:
    assert schemes.find(str(MLRUNS / "optuna.journal")) is SCHEMES[0]
    assert SCHEMES[0].url_schemes == ("",)


@every_kind
def test_its_urls_find_it(kind: Scheme, tmp_path: Path) -> None:
    assert schemes.find(example(kind, tmp_path)) is kind
    for url_scheme in filter(None, kind.url_schemes):  # any case, with a driver or not
        assert schemes.find(f"{url_scheme}://h/x") is kind
        assert schemes.find(f"{url_scheme.upper()}+driver://h/x") is kind


@every_kind
@pytest.mark.parametrize("heartbeat", [None, 7])
def test_it_is_opened_as_its_entry_says(kind: Scheme, heartbeat: int | None, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def recorder(name: str) -> type:
        return type(name, (), {"__init__": lambda self, *args, **kwargs: made.append(
            (name, args, kwargs))})

    for name in ("RDBStorage", "HeartbeatRDBStorage", "JournalStorage",
                 "HeartbeatJournalStorage"):
        monkeypatch.setattr(optuna_storage, name, recorder(name))
    url = example(kind, tmp_path)
    open_storage(url, heartbeat=heartbeat, on_stale=print)
    [(name, args, kwargs)] = made
    if kind.optuna_heartbeat:  # an RDB: Optuna beats, with its own arguments
        assert name == ("HeartbeatRDBStorage" if heartbeat else "RDBStorage")
        assert args == (url,) and kwargs.pop("engine_kwargs") == dict(kind.engine_kwargs)
        assert kwargs == ({"heartbeat_interval": 7, "grace_period": 14,
                           "heartbeat_stale_trial_callback": print} if heartbeat else {})
    else:  # a journal: search.storage.heartbeat beats
        assert name == ("HeartbeatJournalStorage" if heartbeat else "JournalStorage")
        assert isinstance(args[0], optuna.storages.journal.BaseJournalBackend)
        assert kwargs == ({"heartbeat": 7, "on_stale": print} if heartbeat else {})


@every_kind
def test_it_opens_or_says_in_one_line_why_not(kind: Scheme, tmp_path: Path) -> None:
    url = example(kind, tmp_path)
    file = kind.local_file(url)
    if file is None:  # a server, where nothing answers
        with pytest.raises(UsageError) as refused:
            open_storage(url)
        said = str(refused.value)
        assert said.startswith((f"cannot open storage {mask_url(url)!r}: ",
                                f"storage {mask_url(url)!r} needs a missing package: "))
        assert "\n" not in said and PASSWORD not in said
        return
    storage = open_storage(url, heartbeat=5)
    assert isinstance(storage, HeartbeatRDBStorage if kind.optuna_heartbeat
                      else HeartbeatJournalStorage)
    assert isinstance(storage, RDBStorage) == kind.optuna_heartbeat
    study = optuna.create_study(storage=storage, study_name="opened")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert Path(file).is_file()
    assert len(reading.load(url, "opened", "opened").trials) == 1


@every_kind
def test_reading_a_study_that_is_not_there_creates_nothing(kind: Scheme, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as refused:
        reading.load(example(kind, tmp_path), "absent", "digits")
    assert "\n" not in str(refused.value) and PASSWORD not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@every_kind
def test_its_drivers_unanswered_errors_are_unavailable(kind: Scheme) -> None:
    for error in kind.unavailable_errors():
        assert unavailable(error("did not answer"))


def test_an_unsupported_url_is_refused_naming_every_kind() -> None:
    with pytest.raises(UsageError) as refused:
        open_storage("ftp://u:secret@h/x")
    said = str(refused.value)
    assert said.startswith("unsupported storage URL 'ftp://u:***@h/x': use ")
    assert all(kind.form.removesuffix("...") in said for kind in SCHEMES)


def _readme_row(kind: Scheme) -> str:
    where = (f"(default) journal file `{MLRUNS / 'optuna.journal'}`" if kind is SCHEMES[0]
             else f"`{kind.form}`")
    return f"| {where} | {kind.what}{': across nodes' if kind.nodes else ''} |"


def test_the_readme_table_has_one_row_a_kind() -> None:
    text = (REPO / "README.md").read_text()
    table = re.search(r"^\| `--storage` \| what \|\n\| --- \| --- \|\n((?:\|.*\n)*)", text, re.M)
    assert table is not None, "README.md has no `--storage` table"
    expected = [_readme_row(kind) for kind in SCHEMES]
    assert table.group(1).splitlines() == expected, (
        "README.md's --storage table should read, one row a kind of search/storage/schemes.py:\n"
        + "\n".join(expected))


def test_the_cli_help_points_at_that_table() -> None:
    [action] = [a for a in store_parser()._actions if a.dest == "storage"]
    assert action.help is not None and "README.md" in action.help
    heading = re.search(r"'([^']+)'", action.help)
    assert heading is not None
    assert f"\n## {heading.group(1)}\n" in (REPO / "README.md").read_text()


def test_the_distributed_docs_name_only_kinds_that_serve_several_nodes() -> None:
    text = (REPO / "docs" / "distributed.md").read_text()
    named = re.findall(r"`--storage ([a-z][^`\s]*)`", text)
    assert named and all(schemes.find(url).nodes for url in named)

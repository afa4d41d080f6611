"""Where a study comes from: the ones shipped here, the ones installed packages add through the
`finetune_search.studies` entry-point group, a user's file (`path/to/my_study.py`, which defines
`STUDY`) or module (`package.module:NAME`)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from spaces.base import Study

ENTRY_POINTS = "finetune_search.studies"


def is_reference(text: str) -> bool:
    """A file or a module reference, rather than a study's name."""
    return text.endswith(".py") or "/" in text or ":" in text


def canonical(text: str) -> str:
    """The form stored with a study: a file as its absolute path, a module reference as is."""
    if text.endswith(".py") or "/" in text:
        return str(Path(text).expanduser().resolve())
    return text


def installed() -> dict[str, importlib.metadata.EntryPoint]:
    """Studies installed packages add, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def load_reference(text: str) -> Study:
    """The study a file or a module reference defines; ValueError (one line) when it cannot."""
    if text.endswith(".py") or "/" in text:
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"no study file {text}: give a .py file that defines STUDY")
        # A module of its own name, so that the file's functions pickle and its imports work.
        module_name = f"finetune_search_study_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot load {text} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - a user's file failing as it runs: one line
            first = str(e).splitlines()[0] if str(e) else ""
            raise ValueError(f"loading {text} failed: {type(e).__name__}: {first}") from None
        return _study(getattr(module, "STUDY", None), f"{text} defines no STUDY", text)
    module_path, _, attribute = text.partition(":")
    if not module_path or not attribute:
        raise ValueError(f"study reference {text!r} must be package.module:NAME")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        raise ValueError(f"cannot import {module_path!r} for study {text!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a user's module failing as it imports: one line
        raise ValueError(f"importing {module_path} failed: {type(e).__name__}: {e}") from None
    return _study(getattr(module, attribute, None), f"{module_path} has no {attribute}", text)


def _study(found: object, missing: str, text: str) -> Study:
    if found is None:
        raise ValueError(missing)
    if not isinstance(found, Study):
        raise ValueError(f"{text} is a {type(found).__name__}, not a spaces.Study")
    return found


def from_entry_point(name: str, entry: importlib.metadata.EntryPoint) -> Study:
    try:
        found = entry.load()
    except Exception as e:  # noqa: BLE001 - an installed package failing to import: one line
        raise ValueError(f"study {name!r} (from {entry.value}) failed to load: "
                         f"{type(e).__name__}: {e}") from None
    return _study(found, f"study {name!r} ({entry.value}) is empty", entry.value)

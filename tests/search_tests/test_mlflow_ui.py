"""A search reviewed in the MLflow UI, in a real headless browser (Debian's Chromium, Playwright).

The UI is MLflow 3's React app served by `mlflow server` over the search's own store (SQLite
backend, runs' artifacts in local `file://` folders under mlruns/artifacts, which the server reads
for the UI's `get-artifact` requests). Routes and selectors found in MLflow 3.17's UI:

* `#/experiments/ID` (an experiment's link in the experiments list) opens the GenAI overview
  ("Traces 0") in a fresh browser, whatever the experiment's kind: MLflow 3.17's UI takes the
  kind from the sidebar's "GenAI | Model training" switch (remembered by the browser), not from
  the experiment's `mlflow.experimentKind` tag (the search sets it to `custom_model_development`
  all the same: UIs without the switch read it). Once "Model training" is picked, the same link
  opens the runs table, also reached directly, in any browser, at
  `#/experiments/ID/runs?workflowType=machine_learning`: the link search.run prints.
* The runs table is an AG Grid: run names are links (href `#/experiments/ID/runs/RUN_ID`) in the
  cells `[role=gridcell][col-id="attributes.`Run Name`"]`; child runs are hidden until the
  parent's expander (the button in its name cell) is clicked.
* A run's artifacts: `#/experiments/ID/runs/RUN_ID/artifacts`; clicking a file name in the tree
  fetches `get-artifact?path=NAME&run_uuid=RUN_ID` and previews an image as an `<img>` with a
  `blob:` source.

Chromium and Playwright are not optional here: README's test command installs Chromium (apt, in
tests/install-services.sh) and Playwright (the dev extra); the test fails, not skips, without
them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from search.bench.servers import mlflow_server
from search.run import main
from tests.search_tests.conftest import client, runs

pytestmark = pytest.mark.slow  # real searches, processes or servers

CHROMIUM = "/usr/bin/chromium"
FIRST_LOAD_MS = 90_000  # the React app's first load and first search on 2 busy cores
STEP_MS = 45_000  # each later step (expanding a row, opening a page, loading an image)
NAME_CELL = '[role="gridcell"][col-id="attributes.`Run Name`"]'
ARTIFACT = "confusion_matrix.png"


def _missing_browser() -> str | None:
    """Why the browser cannot run here, or None."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium ({CHROMIUM}; apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    if not missing:
        return None
    return (f"missing {' and '.join(missing)}: README's test command installs Chromium and "
            "Playwright (bash tests/install-services.sh; the dev extra); this test needs a real "
            "headless browser and is never skipped")


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@contextmanager
def _browser_page(base_url: str) -> Iterator[Any]:
    """A page in headless Chromium that may only reach the MLflow server; closed on exit."""
    from playwright.sync_api import sync_playwright

    origin = urlsplit(base_url).netloc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            # Offline like every test: anything but the server (fonts, telemetry) is refused
            # at once rather than left to the closed proxy or a DNS timeout.
            context.route(lambda url: urlsplit(url).netloc != origin,
                          lambda route: route.abort())
            page = context.new_page()
            page.set_default_timeout(STEP_MS)
            yield page
        finally:
            browser.close()


def test_search_reviewed_in_the_mlflow_ui(workdir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    problem = _missing_browser()
    if problem:
        pytest.fail(problem, pytrace=False)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    started = time.monotonic()
    assert main(["--study", "digits", "--trials", "2", "--epochs", "2", "--pruner", "none"]) == 0
    printed = re.search(r"^review: mlflow ui --backend-store-uri \S+, then open "
                        r"http://127\.0\.0\.1:5000(/\S+)$", capsys.readouterr().out, re.M)
    assert printed is not None, "search.run printed no link to the experiment's runs"
    experiment = client(workdir).get_experiment_by_name("digits")
    assert experiment is not None, "the search made no MLflow experiment 'digits'"
    eid = experiment.experiment_id
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", (
        experiment.tags)
    assert experiment.artifact_location.startswith("file://"), experiment.artifact_location
    parents, trials = runs(workdir)
    assert len(parents) == 1 and len(trials) == 2, (parents, trials)
    parent = parents[0]
    by_name = {r.info.run_name: r for r in trials}
    assert parent.info.run_name == "digits" and sorted(by_name) == ["trial-0", "trial-1"], (
        parent.info.run_name, sorted(by_name))
    trial = by_name["trial-0"]
    artifact_path = Path(trial.info.artifact_uri.removeprefix("file://")) / ARTIFACT
    assert artifact_path.is_file(), f"no {ARTIFACT} logged at {artifact_path}"
    searched = time.monotonic()

    screenshot = tmp_path / "mlflow-ui.png"
    backend = f"sqlite:///{workdir}/mlruns/mlflow.db"
    with mlflow_server(tmp_path / "ui", backend_store_uri=backend) as server, \
            _browser_page(server.url) as page:
        where = f"(server log {server.log_path}; screenshot of a failure in {tmp_path})"
        ready = time.monotonic()
        try:
            # The link search.run printed, in a fresh browser: the experiment's runs table,
            # with the parent run and, under it, both trials.
            assert printed.group(1) == f"/#/experiments/{eid}/runs?workflowType=machine_learning"
            page.goto(f"{server.url}{printed.group(1)}", wait_until="domcontentloaded")
            names = page.locator(NAME_CELL)
            parent_cell = names.filter(
                has=page.locator(f'a[href="#/experiments/{eid}/runs/{parent.info.run_id}"]'))
            expect(parent_cell, f"the runs table never showed the parent run 'digits' {where}"
                   ).to_be_visible(timeout=FIRST_LOAD_MS)
            expect(parent_cell.get_by_role("link"), "parent run's name in the runs table"
                   ).to_have_text("digits")
            trial_links = {name: names.get_by_role("link", name=name, exact=True)
                           for name in by_name}
            if not trial_links["trial-0"].is_visible():  # nested runs start collapsed
                parent_cell.get_by_role("button").first.click()
            for name, link in trial_links.items():
                expect(link, f"trial run {name!r} not shown under the parent after expanding "
                       f"it {where}").to_be_visible()
                expect(link, f"{name!r} links to another run").to_have_attribute(
                    "href", f"#/experiments/{eid}/runs/{by_name[name].info.run_id}")
            expect(names, "the runs table should list exactly the parent and its 2 trials"
                   ).to_have_count(3)
            page.screenshot(path=str(tmp_path / "mlflow-ui-runs.png"))
            table = time.monotonic()

            # A trial's artifacts: the confusion matrix, read by the server from file://.
            page.goto(f"{server.url}/#/experiments/{eid}/runs/{trial.info.run_id}/artifacts"
                      "?workflowType=machine_learning", wait_until="domcontentloaded")
            entry = page.get_by_text(ARTIFACT, exact=True)
            expect(entry, f"{ARTIFACT} not listed in the trial's artifacts {where}"
                   ).to_be_visible()
            with page.expect_response(lambda r: ARTIFACT in r.url
                                      and trial.info.run_id in r.url) as answer:
                entry.click()
            response = answer.value
            assert response.status == 200, (
                f"the server answered {response.status} for {response.url} {where}")
            content_type = response.headers.get("content-type", "")
            assert content_type.startswith("image/png"), (
                f"{response.url} came back as {content_type!r}, not image/png {where}")
            # The preview: an <img> from the fetched bytes (a blob: URL), decoded by the browser.
            page.wait_for_function(
                """() => [...document.querySelectorAll('img[src^="blob:"]')]
                          .some(img => img.complete && img.naturalWidth > 0)""",
                timeout=STEP_MS)
            image = page.locator('img[src^="blob:"]').filter(visible=True).first
            expect(image, f"the {ARTIFACT} preview is not visible {where}").to_be_visible()
            shown = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert tuple(shown) == _png_size(artifact_path), (
                f"the browser decoded a {shown[0]}x{shown[1]} image, but the logged {ARTIFACT} "
                f"is {_png_size(artifact_path)} {where}")
            page.screenshot(path=str(screenshot))
            shown_at = time.monotonic()

            # The experiment as a user opens it from the experiments list (no tab named): its
            # runs, the study's parent run among them. A browser that has not picked a mode
            # lands on the GenAI overview (see above): the user picks "Model training" once.
            landing_url = f"{server.url}/#/experiments/{eid}"
            page.goto(landing_url, wait_until="domcontentloaded")
            landing = page.locator(NAME_CELL).get_by_role("link", name=parent.info.run_name,
                                                          exact=True)
            # The app picks a tab: the runs, or the GenAI overview, whose first-visit popover
            # ("Got it") covers the page and hides it from ARIA roles: the user closes it, then
            # picks the mode (found by its text).
            page.wait_for_url(re.compile(rf"/#/experiments/{eid}/(runs|overview|traces)\b"),
                              timeout=FIRST_LOAD_MS)
            if f"/experiments/{eid}/runs" not in page.url:
                with suppress(PlaywrightTimeout):  # no popover this time
                    page.get_by_text("Got it", exact=True).click(timeout=15_000)
                page.get_by_text("Model training", exact=True).click()
                page.goto(landing_url, wait_until="domcontentloaded")
            expect(landing, "the experiment's landing page never showed the study's parent "
                   f"run 'digits' {where}").to_be_visible()
            expect(landing, "the parent run's link on the landing page").to_have_attribute(
                "href", f"#/experiments/{eid}/runs/{parent.info.run_id}")
            page.screenshot(path=str(tmp_path / "mlflow-ui-landing.png"))
        except Exception:
            with suppress(Exception):  # the failure itself is what to report
                page.screenshot(path=str(tmp_path / "mlflow-ui-failure.png"))
            raise
    landed = time.monotonic()

    assert screenshot.is_file() and screenshot.stat().st_size > 0, (
        f"no screenshot at {screenshot}")
    print(f"search {searched - started:.1f}s, server and browser up {ready - searched:.1f}s, "
          f"runs table {table - ready:.1f}s, artifact {shown_at - table:.1f}s, "
          f"landing page {landed - shown_at:.1f}s")

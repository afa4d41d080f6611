"""search.review.plots: learning curves and family box plots that a person can read."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.review.plots import curves_figures, draw_family_plots, families_figures

LOSSES = ("cross_entropy", "focal", "huber", "kl", "mae", "mse", "bce", "label_smoothing")
LOSS: dict[str, BaseDistribution] = {"loss": CategoricalDistribution((*LOSSES, "distill"))}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add(study: optuna.Study, loss: str | None, curve: list[float], *,
        pruned: bool = False, value: float | list[float] | None = None, start: int = 1) -> None:
    """A finished trial: its per-epoch values from epoch `start`; completed unless `pruned`."""
    params: dict[str, Any] = {"lr": 0.01} if loss is None else {"loss": loss, "lr": 0.01}
    distributions: dict[str, Any] = {"lr": FloatDistribution(1e-4, 1.0, log=True)}
    if loss is not None:
        distributions |= LOSS
    final = None if pruned else value if value is not None else curve[-1]
    study.add_trial(create_trial(
        params=params, distributions=distributions,
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        value=final if not isinstance(final, list) else None,
        values=final if isinstance(final, list) else None,
        intermediate_values={start + i: v for i, v in enumerate(curve)}))


@pytest.fixture
def study() -> optuna.Study:
    """Three families over 6 epochs: focal best (trial 3), huber's pruned at epochs 2 and 4."""
    study = optuna.create_study(direction="maximize")
    add(study, "cross_entropy", [0.5, 0.6, 0.7, 0.75, 0.8, 0.82])
    add(study, "cross_entropy", [0.4, 0.55, 0.65, 0.7, 0.72, 0.74])
    add(study, "focal", [0.6, 0.7, 0.8, 0.85, 0.88, 0.9])
    add(study, "focal", [0.6, 0.72, 0.81, 0.86, 0.9, 0.93])
    add(study, "huber", [0.3, 0.35], pruned=True)
    add(study, "huber", [0.3, 0.4, 0.45, 0.5], pruned=True)
    add(study, "huber", [0.4, 0.5, 0.55, 0.6, 0.62, 0.64])
    return study


def curves(study: optuna.Study, maximize: bool = True, **kwargs: Any) -> tuple[Figure, Any]:
    figures = curves_figures(study, metric="val_accuracy", maximize=maximize, **kwargs)
    assert figures is not None
    return figures


def families(study: optuna.Study, maximize: bool = True, **kwargs: Any) -> tuple[Figure, Any]:
    figures = families_figures(study, metric="val_accuracy", maximize=maximize, **kwargs)
    assert figures is not None
    return figures


def points(figure: Figure) -> list[list[list[float]]]:
    """The (x, y) of every point a families plot shows, family by family."""
    return [c.get_offsets().tolist() for c in figure.axes[0].collections]  # type: ignore[union-attr]


def xs(line: Line2D) -> list[float]:
    return np.asarray(line.get_xdata()).tolist()


def legend_texts(figure: Figure) -> list[str]:
    legend = figure.axes[0].get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def trial_line(figure: Figure, number: int) -> list[Line2D]:
    return [line for line in figure.axes[0].get_lines() if line.get_gid() == f"trial {number}"]


def test_both_plots_are_written_as_png_and_html(study: optuna.Study, tmp_path: Path) -> None:
    import matplotlib.image

    notes = draw_family_plots(study, tmp_path, metric="val_accuracy", maximize=True)
    assert notes == []
    for name in ("learning_curves", "families"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 200 and width > 300
        html = (tmp_path / f"{name}.html").read_text()
        assert "cdn.plot.ly" in html and "focal" in html


def test_the_legend_names_families_with_counts_and_the_best_trial(study: optuna.Study) -> None:
    png, html = curves(study)
    texts = legend_texts(png)
    assert texts == ["cross_entropy (2)", "focal (2)", "huber (3)", "best: trial 3 (focal)"]
    assert not any("Trial" in text for text in texts)
    shown = [trace.name for trace in html.data if trace.showlegend]
    assert shown == ["cross_entropy (2)", "focal (2)", "huber (3)", "best: trial 3 (focal)"]
    assert {trace.legendgroup for trace in html.data} == {"cross_entropy", "focal", "huber",
                                                         "best"}


def test_the_legend_lists_families_in_sorted_order_whatever_the_trial_order() -> None:
    study = optuna.create_study(direction="maximize")
    for loss in ("mse", "focal", "bce", "focal"):
        add(study, loss, [0.1, 0.2])
    png, html = curves(study)
    assert legend_texts(png) == ["bce (1)", "focal (2)", "mse (1)", "best: trial 0 (mse)"]
    shown = sorted((trace.legendrank, trace.name) for trace in html.data if trace.showlegend)
    assert [name for _, name in shown] == legend_texts(png)


def test_each_family_has_one_colour_the_same_in_png_and_html(study: optuna.Study) -> None:
    png, html = curves(study)
    png_colours = {line.get_gid(): line.get_color() for line in png.axes[0].get_lines()
                   if line.get_gid()}
    assert png_colours["trial 0"] == png_colours["trial 1"] != png_colours["trial 2"]
    assert len({png_colours[f"trial {n}"] for n in (0, 2, 4)}) == 3
    html_colours = {trace.meta["trial"]: trace.line.color for trace in html.data}
    assert all(html_colours[n] == png_colours[f"trial {n}"] for n in range(7))
    _, boxes = families(study)
    assert {trace.name.split("<br>")[0]: trace.marker.color for trace in boxes.data} == {
        "focal": png_colours["trial 2"], "cross_entropy": png_colours["trial 0"],
        "huber": png_colours["trial 4"]}


def test_the_best_trial_is_thicker_and_on_top(study: optuna.Study) -> None:
    png, html = curves(study)
    lines = trial_line(png, 3)
    assert len(lines) == 2  # once in its family, once as the best
    best = max(lines, key=Line2D.get_linewidth)
    others = [line for line in png.axes[0].get_lines() if line is not best]
    assert all(best.get_linewidth() > line.get_linewidth() for line in others)
    assert all(best.get_zorder() >= line.get_zorder() for line in others)
    assert html.data[-1].name == "best: trial 3 (focal)" and html.data[-1].meta == {"trial": 3}


def test_pruned_trials_are_dashed_and_end_at_their_last_epoch(study: optuna.Study) -> None:
    png, html = curves(study)
    for number, last in ((4, 2), (5, 4)):
        (line,) = trial_line(png, number)
        assert line.get_linestyle() == "--"
        assert xs(line) == list(range(1, last + 1))
        ends = [other for other in png.axes[0].get_lines()
                if other.get_marker() == "x" and xs(other) == [last]]
        assert len(ends) == 1  # the x where it was stopped
        (trace,) = [t for t in html.data if t.meta == {"trial": number}]
        assert trace.line.dash == "dash" and trace.x[-1] == last
        assert trace.marker.symbol == "x" and trace.marker.size[-1] > 0
    (complete,) = trial_line(png, 0)
    assert complete.get_linestyle() == "-"


def test_epochs_are_whole_numbers(study: optuna.Study) -> None:
    png, html = curves(study)
    png.draw_without_rendering()
    ticks = png.axes[0].get_xticks()
    assert len(ticks) >= 2 and all(float(tick).is_integer() for tick in ticks)
    assert png.axes[0].get_xlabel() == "epoch" and png.axes[0].get_ylabel() == "val_accuracy"
    assert html.layout.xaxis.tickformat == "d" and html.layout.xaxis.dtick == 1
    assert html.layout.title.text


def test_hover_text_names_trial_family_and_value(study: optuna.Study) -> None:
    _, html = curves(study)
    (trace,) = [t for t in html.data if t.meta == {"trial": 4}]
    assert trace.text[-1] == "trial 4 (huber, pruned)<br>epoch 2<br>val_accuracy: 0.35"


def test_families_are_ordered_best_median_first(study: optuna.Study) -> None:
    png, html = families(study)
    labels = [label.get_text() for label in png.axes[0].get_xticklabels()]
    assert labels == ["focal\n(2)", "cross_entropy\n(2)", "huber\n(1)"]  # pruned not counted
    assert [trace.name for trace in html.data] == ["focal<br>(2)", "cross_entropy<br>(2)",
                                                   "huber<br>(1)"]
    assert all(trace.boxpoints == "all" for trace in html.data)
    png_min, _ = families(study, maximize=False)
    assert [label.get_text() for label in png_min.axes[0].get_xticklabels()] == [
        "huber\n(1)", "cross_entropy\n(2)", "focal\n(2)"]


def test_every_final_value_is_a_point_and_the_jitter_is_the_same_each_time(
        study: optuna.Study) -> None:
    first, _ = families(study)
    again, _ = families(study)
    assert sorted(y for family in points(first) for _, y in family) == pytest.approx(
        sorted([0.82, 0.74, 0.9, 0.93, 0.64]))
    assert points(first) == points(again)


def test_nothing_to_draw_gives_notes_and_no_files(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(params={"loss": "focal"}, distributions=LOSS, value=0.5))
    notes = draw_family_plots(study, tmp_path, metric="val_accuracy", maximize=True)
    assert notes == ["learning_curves plot skipped: no trial reported a value"]
    assert not list(tmp_path.glob("learning_curves.*"))
    assert {p.name for p in tmp_path.iterdir()} == {"families.png", "families.html"}

    pruned_only = optuna.create_study(direction="maximize")
    add(pruned_only, "focal", [0.1, 0.2], pruned=True)
    (tmp_path / "x").mkdir()
    notes = draw_family_plots(pruned_only, tmp_path / "x", metric="val_accuracy", maximize=True)
    assert notes == ["families plot skipped: no completed trial yet"]
    assert {p.name for p in (tmp_path / "x").iterdir()} == {"learning_curves.png",
                                                            "learning_curves.html"}
    assert legend_texts(curves(pruned_only)[0]) == ["focal (1)"]  # no best trial yet

    empty = optuna.create_study()
    assert draw_family_plots(empty, tmp_path, metric="loss", maximize=False) == [
        "learning_curves plot skipped: no trial reported a value",
        "families plot skipped: no completed trial yet"]


def test_a_multi_objective_study_plots_the_value_at_index() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    add(study, "focal", [0.5, 0.8], value=[0.1, 0.8])
    add(study, "mae", [0.5, 0.7], value=[0.05, 0.7])
    add(study, "mae", [0.4, 0.6], value=[0.2, 0.6])
    png, _ = families(study, index=1)
    ys = sorted(y for family in points(png) for _, y in family)
    assert ys == pytest.approx([0.6, 0.7, 0.8])
    assert legend_texts(curves(study, index=1)[0])[-1] == "best: trial 0 (focal)"
    assert legend_texts(curves(study, False, index=0)[0])[-1] == "best: trial 1 (mae)"


def test_trials_without_the_family_parameter_and_penalty_families(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    add(study, None, [0.2, 0.3], start=0)
    add(study, "focal", [0.2, 0.4], start=0)
    penalty: dict[str, BaseDistribution] = {
        "penalty": CategoricalDistribution(("none", "l1", "l2", "l2_sp"))}
    study.add_trial(create_trial(params={"penalty": "l2_sp"}, distributions=penalty, value=0.3,
                                 intermediate_values={0: 0.4, 1: 0.3}))
    assert legend_texts(curves(study)[0]) == ["(none) (2)", "focal (1)", "best: trial 1 (focal)"]
    assert legend_texts(curves(study, family="penalty")[0]) == [
        "(none) (2)", "l2_sp (1)", "best: trial 1 ((none))"]
    assert draw_family_plots(study, tmp_path, metric="val_accuracy", maximize=True,
                             family="penalty") == []


def test_many_families_and_one_epoch_trials_print_no_warning(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    for i in range(40):
        add(study, LOSSES[i % len(LOSSES)], [0.1 + i / 100] * (1 + i % 12),
            pruned=i % 3 == 0)
    add(study, "distill", [0.95])  # one epoch only: a dot, not an invisible line
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert draw_family_plots(study, tmp_path, metric="val_accuracy", maximize=True) == []
        png, _ = curves(study)
    assert len(legend_texts(png)) == len(LOSSES) + 1 + 1  # families + distill + best
    assert legend_texts(png)[-1] == "best: trial 40 (distill)"
    (dot, _) = trial_line(png, 40)
    assert dot.get_marker() == "o"

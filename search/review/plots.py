"""Report plots a person can read: learning curves and final values, grouped by trial family.

Optuna's own intermediate-values plot names every trial in its legend (40 "TrialN" entries in
repeating colours) and shows epochs as 2.5, 5.0. Here a trial's colour says its family (its
`loss` or `penalty` parameter, one fixed colour per family in PNG and HTML alike), the legend
names families with their trial counts, pruned trials are dashed and end in an x where they were
stopped, the best trial is drawn thicker on top, and epochs are whole numbers.
`draw_family_plots` writes the files; `curves_figures` and `families_figures` build the figures.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.study import balance
from search.study.display import best_of, final_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NO_FAMILY = "(none)"  # a trial without the family parameter
DRAWN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def draw_family_plots(study: optuna.Study, folder: Path, *, metric: str, maximize: bool,
                      index: int = 0, family: str = "loss") -> list[str]:
    """Write learning_curves.{png,html} and families.{png,html} into `folder`; returns notes
    (one short line each) for plots skipped, e.g. "learning_curves plot skipped: no trial
    reported a value"."""
    notes = []
    for name, build, missing in (("learning_curves", curves_figures, "no trial reported a value"),
                                 ("families", families_figures, "no completed trial yet")):
        figures = build(study, metric=metric, maximize=maximize, index=index, family=family)
        if figures is None:
            notes.append(f"{name} plot skipped: {missing}")
            continue
        png, html = figures
        png.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        html.write_html(folder / f"{name}.html", include_plotlyjs="cdn")  # as mlflow.log_figure
    return notes


def family_of(trial: FrozenTrial, family: str) -> str:
    """The trial's family as a plot labels it (search.study.balance says what it is)."""
    value = balance.family_of(trial, family)
    return NO_FAMILY if value is None else str(value)




def palette(study: optuna.Study, family: str) -> dict[str, str]:
    """One colour per family of the study's drawn trials, in sorted family order (tab10)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    names = sorted({family_of(t, family) for t in study.get_trials(deepcopy=False, states=DRAWN)})
    colours = colormaps["tab10" if len(names) <= 10 else "tab20"]  # an int picks the i-th colour
    return {name: to_hex(colours(i % colours.N)) for i, name in enumerate(names)}


def curves_figures(study: optuna.Study, *, metric: str, maximize: bool, index: int = 0,
                   family: str = "loss") -> tuple[Figure, Any] | None:
    """Per-epoch values of every trial that reported one, coloured by family, as a matplotlib
    figure and a plotly figure; None when no trial reported a value."""
    import plotly.graph_objects as go
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    trials = [t for t in study.get_trials(deepcopy=False, states=DRAWN) if t.intermediate_values]
    if not trials:
        return None
    colours = palette(study, family)
    counts: dict[str, int] = {}
    for t in trials:
        counts[family_of(t, family)] = counts.get(family_of(t, family), 0) + 1
    best = best_of(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), index,
                      maximize)
    best = best if best and best.intermediate_values else None  # no curve to draw
    title = f"{metric} per epoch, coloured by {family}"
    subtitle = "dashed, ending in x: pruned where it stopped"
    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot()
    html = go.Figure()
    shown: set[str] = set()
    # Every trial in its family colour, then the best one again, thicker and on top.
    for t, is_best in [(t, False) for t in trials] + ([(best, True)] if best else []):
        name, pruned = family_of(t, family), t.state == TrialState.PRUNED
        steps, values = zip(*sorted(t.intermediate_values.items()), strict=True)
        colour, width = colours[name], 3.0 if is_best else 1.0
        label = f"best: trial {t.number} ({name})" if is_best else f"{name} ({counts[name]})"
        ax.plot(steps, values, color=colour, linewidth=width, linestyle="--" if pruned else "-",
                alpha=1.0 if is_best else 0.6, zorder=3 if is_best else 2, gid=f"trial {t.number}",
                marker="o" if len(steps) == 1 and not pruned else None, markersize=4)
        if pruned:
            ax.plot([steps[-1]], [values[-1]], color=colour, marker="x", markersize=7, zorder=3)
        end = 9 if pruned else 6 if len(steps) == 1 else 0
        html.add_trace(go.Scatter(
            x=steps, y=values, mode="lines+markers", name=label, meta={"trial": t.number},
            legendgroup="best" if is_best else name, showlegend=is_best or name not in shown,
            legendrank=len(counts) + 1 if is_best else sorted(counts).index(name) + 1,
            line={"color": colour, "width": width * 1.5, "dash": "dash" if pruned else "solid"},
            marker={"symbol": "x" if pruned else "circle", "color": colour,
                    "size": [0] * (len(steps) - 1) + [end]}, opacity=1.0 if is_best else 0.6,
            text=[f"trial {t.number} ({name}{', pruned' if pruned else ''})<br>epoch {s}<br>"
                  f"{metric}: {v:.4g}" for s, v in zip(steps, values, strict=True)],
            hovertemplate="%{text}<extra></extra>"))
        shown.add(name)
    handles = [Line2D([], [], color=colours[n], linewidth=2.0, label=f"{n} ({counts[n]})")
               for n in sorted(counts)]
    if best:
        handles.append(Line2D([], [], color=colours[family_of(best, family)], linewidth=3.0,
                              label=f"best: trial {best.number} ({family_of(best, family)})"))
    ax.legend(handles=handles, title=family, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel=metric, title=f"{title}\n({subtitle})")
    ax.grid(alpha=0.3)
    epochs = [s for t in trials for s in t.intermediate_values]
    html.update_layout(
        title=f"{title}<br><sub>{subtitle}</sub>", template="plotly_white", legend_title=family,
        xaxis={"title": "epoch", "tickformat": "d", "tickmode": "linear", "tick0": 0,
               "dtick": max(1, math.ceil((max(epochs) - min(epochs)) / 10))},
        yaxis_title=metric)
    return fig, html


def families_figures(study: optuna.Study, *, metric: str, maximize: bool, index: int = 0,
                     family: str = "loss") -> tuple[Figure, Any] | None:
    """Final values of completed trials by family, as box plots with every trial a point, the
    best median first; a matplotlib figure and a plotly figure; None before a completed trial."""
    import numpy as np
    import plotly.graph_objects as go
    from matplotlib.figure import Figure

    groups: dict[str, list[tuple[int, float]]] = {}  # family: [(trial number, value)]
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if (value := final_value(t, index)) is not None:
            groups.setdefault(family_of(t, family), []).append((t.number, value))
    if not groups:
        return None
    colours = palette(study, family)
    medians = {name: statistics.median(v for _, v in points) for name, points in groups.items()}
    order = sorted(groups, key=lambda n: (-medians[n] if maximize else medians[n], n))
    title = f"final {metric} by {family} (completed trials, best median first)"
    fig = Figure(figsize=(max(6.0, 1.0 * len(order) + 2.0), 5))
    ax = fig.add_subplot()
    positions = list(range(1, len(order) + 1))
    boxes = ax.boxplot([[v for _, v in groups[n]] for n in order], positions=positions,
                       widths=0.6, showfliers=False, patch_artist=True,
                       medianprops={"color": "black"})
    rng = np.random.default_rng(0)  # the same jitter on every report
    html = go.Figure()
    for position, name, box in zip(positions, order, boxes["boxes"], strict=True):
        numbers, values = zip(*groups[name], strict=True)
        box.set(facecolor=colours[name], alpha=0.35)
        ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=20, zorder=3,
                   color=colours[name], edgecolors="black", linewidths=0.5)
        html.add_trace(go.Box(
            y=values, name=f"{name}<br>({len(values)})", boxpoints="all", jitter=0.4, pointpos=0,
            marker_color=colours[name], line_color=colours[name], showlegend=False,
            text=[f"trial {n} ({name})" for n in numbers],
            hovertemplate=f"%{{text}}<br>{metric}: %{{y:.4g}}<extra></extra>"))
    ax.set_xticks(positions, [f"{n}\n({len(groups[n])})" for n in order])
    if len(order) > 5:  # long names (label_smoothing, cross_entropy) would overlap
        ax.tick_params(axis="x", labelrotation=30)
    ax.set(xlabel=family, ylabel=metric, title=title)
    ax.grid(axis="y", alpha=0.3)
    html.update_layout(title=title, template="plotly_white", xaxis_title=family,
                       yaxis_title=metric)
    return fig, html

"""The steps of the GPU benchmark (`search.bench.gpu`): how each runs, what it runs on, and
the measurements that are not search commands.

- `Runner` runs each step as a child process with a time limit, within one budget, and records
  its outcome: a step that fails or runs out of time does not stop the next one.
- The files it runs on (fake CIFAR-10, random weights) come from `search.bench.data`.
- Probes, run as `python -m search.bench.steps NAME KWARGS_JSON OUT_JSON`: training throughput
  against a DataLoader loop, cuDNN autotuning off and on, GPU memory after many pruned trials,
  and a real out-of-memory trial, the last two through the search itself (`open_search`).
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.core import names

if TYPE_CHECKING:
    from objectives.data import Task
    from search.execution.session import Search

ROOT = Path(__file__).resolve().parents[1]  # first on the children's path: this checkout runs
MIN_STEP_S = 10.0  # a step the budget leaves less time than this is skipped
TAIL_CHARS = 3000  # of a step's output, kept in the report
MIB = 2**20


@dataclass
class Step:
    name: str
    status: str = "skipped"  # ok, failed, timed out, skipped, not measured
    exit_status: int | None = None
    wall_s: float = 0.0
    limit_s: float | None = None
    command: str = ""
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    tail: str = ""


Reader = Callable[[Step, str], dict[str, Any]]  # (the step, its output) -> its figures


class Runner:
    """Runs steps one after another in the work folder, each with a time limit, within one
    budget, and records every outcome."""

    def __init__(self, *, work: Path, logs: Path, budget: float, slack: float) -> None:
        self.work, self.logs, self.slack = work, logs, slack
        self.deadline = time.monotonic() + budget
        self.steps: list[Step] = []
        path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1")

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        print(f"gpu: [{len(self.steps):2d}] {step.name}: {step.status}"
              + (f" ({step.note})" if step.note else ""), flush=True)
        return step

    def call(self, name: str, function: Callable[[], dict[str, Any]]) -> Step:
        """An in-process step (no limit: writing the files takes seconds)."""
        started, step = time.monotonic(), Step(name, command=f"in process: {name}")
        try:
            step.figures, step.status, step.exit_status = function(), "ok", 0
        except Exception:
            step.status, step.exit_status = "failed", 1
            step.tail = traceback.format_exc()[-TAIL_CHARS:]
        step.wall_s = round(time.monotonic() - started, 2)
        return self.add(step)

    def run(self, name: str, cap: float, argv: list[str] | Callable[[float], list[str]], *,
            read: Reader | None = None, needs: tuple[Step, ...] = ()) -> Step:
        """`python ARGV` in the work folder, limited to `cap` x slack seconds or what the
        budget has left; `argv` may be a function of that limit. `read` gives the figures."""
        failed = [n for n in needs if n.status != "ok"]
        if failed:
            return self.add(Step(name, note=f"needs {failed[0].name}, which "
                                           f"{'was ' if failed[0].status == 'skipped' else ''}"
                                           f"{failed[0].status}"))
        limit = min(cap * self.slack, self.deadline - time.monotonic())
        if limit < MIN_STEP_S:
            return self.add(Step(name, note="no time left in the budget"))
        argv = argv(limit) if callable(argv) else argv
        step = Step(name, limit_s=round(limit), command=shlex.join(["python", *argv]))
        print(f"gpu: [{len(self.steps) + 1:2d}] {name}: {step.command} (limit {limit:.0f}s)",
              flush=True)
        log = self.logs / f"{name}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            child = subprocess.Popen([sys.executable, *argv], cwd=self.work, env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                step.exit_status = child.wait(timeout=limit)
                step.status = "ok" if step.exit_status == 0 else "failed"
            except subprocess.TimeoutExpired:
                step.exit_status, step.status = _stop(child), "timed out"
        step.wall_s = round(time.monotonic() - started, 2)
        output = log.read_text(errors="replace")
        step.tail = output[-TAIL_CHARS:]
        if step.status == "ok" and read is not None:
            try:
                step.figures = read(step, output)
            except Exception as e:  # noqa: BLE001 - recorded as the step's failure
                step.status, step.note = "failed", f"its results: {type(e).__name__}: {e}"
            if problem := step.figures.pop("problem", None):
                step.status, step.note = "failed", problem
        self.steps.append(step)
        shown = "; ".join(f"{k} {fmt(v)}" for k, v in step.figures.items())
        print(f"gpu:      {name}: {step.status} in {step.wall_s:.0f}s"
              + (f" ({step.note})" if step.note else "") + (f": {shown[:300]}" if shown else ""),
              flush=True)
        return step


def fmt(value: Any) -> str:
    """A figure as the report shows it."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return "-" if value is None else str(value)


def _stop(child: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the child's process group (a search's launcher passes it on to its
    workers, which end their trials), SIGKILL 10 s later."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return child.wait()


# ---------------------------------------------------------------- probes (child processes)


def throughput(*, device: str, backbone: str, resolution: int, batch_size: int, steps: int,
               warmup: int, rounds: int) -> dict[str, Any]:
    """`search.bench.throughput`, its DataLoader with as many workers as this machine has
    cores (pinned memory on CUDA), over random images: nothing to read from disk."""
    from search.bench.throughput import Throughput, measure

    return measure(Throughput(device=device, backbone=backbone, resolution=resolution,
                              batch_size=batch_size, steps=steps, warmup=warmup, rounds=rounds,
                              workers=os.cpu_count(), data=None))


def _random_task(images: int, val: int) -> Task:
    """`images` random 32x32 uint8 training images (and `val` for validation), CIFAR-style
    augmentation, a ResNet-18 with a 10-class head: a task that needs no files."""
    import torch

    from objectives.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
    from objectives.data import ImageData, Split, Task

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images + val, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.arange(len(x)) % 10
    train, held = Split(x[:images], y[:images]), Split(x[images:], y[images:])
    data = ImageData(train, held, held, tuple(map(str, range(10))), IMAGENET_MEAN, IMAGENET_STD,
                     crop_padding=4, flip=True)
    return Task("bench", data, lambda seed: build_backbone("resnet18", 10, state=None,
                                                           seed=seed))


def cudnn(*, device: str, images: int, batch_size: int) -> dict[str, Any]:
    """A 2-epoch `fine_tune` (ResNet-18, 32 px) with cuDNN autotuning off, then on: epoch 1's
    seconds (autotuning of every new shape included) and epoch 2's training images/s."""
    import torch

    from objectives import train
    from objectives.config import TrialConfig

    config = TrialConfig(loss="cross_entropy", optimizer="adamw", lr=1e-3, warmup_epochs=0.0,
                         epochs=2, batch_size=batch_size, resolution=32, seed=0)
    # First, other shapes (batch, validation size): the CUDA context, cuBLAS, cuDNN and the
    # allocator are warm for both timed runs, and neither finds its own shapes tuned already.
    train.CUDNN_BENCHMARK = False
    warm = max(batch_size // 2, 2)
    train.fine_tune(config.replace(epochs=1, batch_size=warm), _random_task(4 * warm, 20),
                    device=device)
    whole = max(images // batch_size, 1) * batch_size  # no short last batch: one shape
    task = _random_task(whole, min(1000, max(20, whole // 10)))
    figures: dict[str, Any] = {"device": device, "images": len(task.data.train)}
    for flag in (False, True):
        train.CUDNN_BENCHMARK = flag
        first, second = train.fine_tune(config, task, device=device).history
        figures["on" if flag else "off"] = {
            "first_epoch_s": first["epoch_seconds"],
            "second_epoch_images_per_s": second["images_per_second"],
            "torch_cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
        print(f"cudnn.benchmark {flag}: {figures['on' if flag else 'off']}", flush=True)
    on, off = figures["on"], figures["off"]
    figures["autotuning_cost_s"] = on["first_epoch_s"] - off["first_epoch_s"]
    figures["speedup"] = on["second_epoch_images_per_s"] / off["second_epoch_images_per_s"]
    if device == "cuda" and (not on["torch_cudnn_benchmark"] or off["torch_cudnn_benchmark"]):
        figures["problem"] = "fine_tune did not follow objectives.train.CUDNN_BENCHMARK"
    return figures


def _open(name: str, *, device: str, resolution: int, epochs: int, trials: int,
          params: dict[str, Any]) -> Search:
    """A cifar10 search over the benchmark's files in the current folder, `trials` copies of
    `params` enqueued, its data loaded on the device."""
    from search.execution.session import SearchOptions, open_search

    search = open_search(SearchOptions(
        study="cifar10", name=name, data_dir="data", weights="resnet18.pt", device=device,
        resolution=resolution, epochs=epochs, trials=trials, pruner="none", sampler="random",
        # The queued copies of `params` are the trials measured: no recipe before them, and
        # their batch size among the choices, whatever the data's size would leave.
        recipes="none", choices=[("batch_size", str(params["batch_size"]))]
        if "batch_size" in params else ()))
    for _ in range(trials):
        search.study.enqueue_trial(params)
    search.task()
    return search


def _allocated() -> float:
    """MiB allocated on the GPU once its queued work is done."""
    import torch

    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / MIB


def memory(*, device: str, trials: int, seconds: float, params: dict[str, Any]) -> dict[str, Any]:
    """Up to `trials` trials in one process, each pruned after its first epoch, through the
    search's own path (`Search.optimize`); GPU memory allocated after the first and the last."""
    import optuna

    from search.study.optuna_study import state_counts

    search = _open("bench-memory", device=device, resolution=32, epochs=2, trials=trials,
                   params=params)
    search.study.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy < 2: all pruned
    cuda = device == "cuda"
    before, marks, done, started = _allocated() if cuda else 0.0, [], 0, time.monotonic()
    while done < trials:
        elapsed = time.monotonic() - started
        if done and elapsed * (done + 1) / done > seconds:
            break  # the next trial would not end in time
        search.optimize(n_trials=1)
        done += 1
        marks.append(_allocated() if cuda else 0.0)
        if done % 10 == 0 or done == 1:
            print(f"trial {done}: {marks[-1]:.1f} MiB allocated", flush=True)
    search.close()
    figures: dict[str, Any] = {"trials": done, "states": dict(state_counts(search.study))}
    if not cuda:
        return figures | {"allocated": "not measured on cpu"}
    gc.collect()
    first, last = marks[0], marks[-1]
    return figures | {"allocated_mib": {"before": before, "after_first": first,
                                        "after_last": last, "after_gc": _allocated()},
                      "growth_pct": 100 * (last / first - 1)}


def oom(*, device: str, headroom_mib: int, params: dict[str, Any]) -> dict[str, Any]:
    """One trial that cannot fit (224 px under a memory cap just above what the data holds),
    through the search's own path; then, with the cap lifted, its retry."""
    import torch
    from optuna.trial import TrialState

    if device != "cuda":
        raise ValueError("a real CUDA out-of-memory needs --device cuda")
    search = _open("bench-oom", device=device, resolution=224, epochs=1, trials=1,
                   params=params)
    gc.collect()
    torch.cuda.empty_cache()
    before = _allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    cap = torch.cuda.memory_reserved() + headroom_mib * MIB
    torch.cuda.set_per_process_memory_fraction(cap / total)
    search.optimize(n_trials=1)
    after = _allocated()
    torch.cuda.set_per_process_memory_fraction(1.0)
    failed = search.study.trials[0]
    retries = [t for t in search.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
               if t.system_attrs.get(names.RETRY_OF) == failed.number]
    if retries:  # the search goes on: with the cap lifted, the retry fits
        search.optimize(n_trials=1)
    search.close()
    retried = [t for t in search.study.trials if t.number != failed.number]
    return {"state": failed.state.name, "fail_reason": failed.user_attrs.get(names.FAIL_REASON),
            "retry_queued": bool(retries), "cap_mib": cap / MIB,
            "retry_state": retried[0].state.name if retried else None,
            "allocated_mib": {"before": before, "after": after}}


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "throughput": throughput, "cudnn": cudnn, "memory": memory, "oom": oom}


def main(argv: list[str] | None = None) -> int:
    name, kwargs, out = sys.argv[1:] if argv is None else argv
    figures = PROBES[name](**json.loads(kwargs))
    Path(out).write_text(json.dumps(figures, indent=1, default=str))
    print(f"{name}: {json.dumps(figures, default=str)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

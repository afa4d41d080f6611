"""`python -m search.bench --only gpu`: the GPU acceptance run, every check in one command.

From a clean checkout, with no network and no real data, on one GPU in under 8 minutes: it
writes CIFAR-10 in torchvision's on-disk format and a random ResNet-18 state dict into a work
folder, then runs each step there as a child process with a time limit, within one budget (a
step that fails or runs out of time is recorded with the tail of its output, and the next one
starts; a step the budget no longer fits is skipped and named): training throughput against a
DataLoader + PIL loop, a `cifar10` search with a checkpoint every epoch, its refit, a
distillation search taught by the refit model, trials per hour with 1, 2 and 4 trials per GPU
(the same enqueued trials each), GPU memory after many pruned trials, a real out-of-memory
trial, cuDNN autotuning off and on, and `--compile`. The report, each target next to its
figure, goes to mlruns/bench/gpu.md and gpu.json, every step's output to mlruns/bench/gpu-logs/.
`--device cpu` runs every step at toy sizes (GPU memory and out-of-memory are not measured
there), so that the command cannot rot.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from search.bench.data import write_cifar, write_weights
from search.bench.steps import TAIL_CHARS, Reader, Runner, Step, fmt
from search.core import names
from search.core.names import OVER_BUDGET
from search.storage.optuna_storage import open_storage

REPORT_DIR = Path("mlruns") / "bench"


@dataclass(frozen=True)
class Size:
    """How big the steps are. Time limits are the GPU's (CAPS) times `slack`."""

    train: int  # CIFAR-format training images written (10% of them become validation)
    test: int
    epochs: int  # per trial, in every search
    batch_size: int  # of every enqueued trial
    freeze_depth: int  # of the plain trials (compile, memory)
    bench: tuple[int, int, int, int]  # throughput at 32 px: batch, timed steps, warm-up, rounds
    bench_large: tuple[int, int, int, int]  # the same at `large_side` px
    large_side: int  # 224, as ImageNet backbones are fine-tuned; less on a CPU's toy run
    per_gpu: tuple[int, ...]  # trials per GPU (workers on a CPU) to compare
    pack_trials: int  # the budget of each, over the same enqueued trials
    memory_trials: int  # pruned trials in one process (fewer if its time runs out)
    cudnn_images: int
    budget: float  # seconds for all the steps together
    slack: float  # each step's limit is its GPU cap (CAPS) times this


# full: one H100/H200, budgeted to end within 8 minutes (not yet run on one); small: the CPU's
# default, about 4 minutes on 2 cores; tiny: the test suite's, about 2 minutes.
SIZES = {
    "full": Size(train=10_000, test=1_000, epochs=2, batch_size=256, freeze_depth=0,
                 bench=(256, 30, 5, 3), bench_large=(256, 20, 3, 2), large_side=224,
                 per_gpu=(1, 2, 4), pack_trials=8, memory_trials=50, cudnn_images=20_480,
                 budget=440, slack=1.0),
    "small": Size(train=600, test=100, epochs=2, batch_size=64, freeze_depth=0,
                  bench=(32, 4, 1, 1), bench_large=(8, 2, 1, 1), large_side=224,
                  per_gpu=(1, 2, 4), pack_trials=4, memory_trials=6, cudnn_images=512,
                  budget=540, slack=2.5),
    "tiny": Size(train=200, test=50, epochs=1, batch_size=64, freeze_depth=3,
                 bench=(16, 2, 1, 1), bench_large=(4, 1, 1, 1), large_side=64,
                 per_gpu=(1, 2), pack_trials=2, memory_trials=3, cudnn_images=128,
                 budget=600, slack=2.5),
}
CAPS = {  # seconds on one GPU, imports and start-up included
    "throughput_32": 60, "search": 90, "refit": 75, "distill": 75, "trials_per_gpu": 75,
    "memory": 90, "oom": 45, "cudnn": 45, "compile": 180, "throughput_224": 60,
    "throughput_r50": 75,
}
BASE = {"loss": "cross_entropy", "penalty": "none", "optimizer": "adamw", "lr": 1e-3,
        "lr_decay": 1.0, "warmup_epochs": 0.5, "weight_decay": 1e-4}
VARIANTS = (  # the plain search's trials: other losses, penalties, optimizers, freeze depths
    {"freeze_depth": 0},
    {"loss": "label_smoothing", "label_smoothing": 0.1, "penalty": "l2_sp",
     "penalty_lambda": 1e-4, "optimizer": "momentum", "momentum": 0.9, "nesterov": True,
     "lr": 1e-2, "lr_decay": 0.5, "freeze_depth": 2},
    {"loss": "focal", "focal_gamma": 2.0, "penalty": "l2", "penalty_lambda": 1e-5,
     "freeze_depth": 5},
)
DISTILL = (
    {"loss": "distill", "distill_temperature": 3.0, "distill_alpha": 0.7,
     "distill_base": "cross_entropy", "freeze_depth": 0},
    {"loss": "distill", "distill_temperature": 5.0, "distill_alpha": 0.3, "distill_base": "focal",
     "focal_gamma": 2.0, "optimizer": "momentum", "momentum": 0.9, "nesterov": True, "lr": 1e-2,
     "freeze_depth": 2},
)


class Steps:
    """Every step's command line and reader, over one work folder."""

    def __init__(self, work: Path, device: str, size: Size) -> None:
        self.work, self.device, self.size = work, device, size
        self.plain = {**BASE, "batch_size": size.batch_size, "freeze_depth": size.freeze_depth}

    def study(self, name: str) -> optuna.Study:
        return optuna.load_study(study_name=name, storage=open_storage(self.journal))

    @property
    def journal(self) -> str:
        return str(self.work / "mlruns" / "optuna.journal")

    def enqueue(self, name: str, trials: list[dict[str, Any]], **attrs: str) -> None:
        """Fixed trials, so that each run is the same and every trial's fate is known."""
        study = optuna.create_study(study_name=name, storage=open_storage(self.journal),
                                    direction="maximize", load_if_exists=True)
        for key, value in attrs.items():  # a teacher must be there before the trials
            study.set_user_attr(key, value)
        for params in trials:
            study.enqueue_trial({**self.plain, **params})

    def search(self, name: str, trials: int, *more: str) -> list[str]:
        return ["-m", "search.run", "--study", "cifar10", "--name", name, "--data-dir", "data",
                "--weights", "resnet18.pt", "--device", self.device, "--resolution", "32",
                "--epochs", str(self.size.epochs), "--trials", str(trials), "--pruner", "none",
                "--race", "none", *more]  # the queued trials are what is measured

    def probe(self, step: str, probe: str, **kwargs: Any) -> list[str]:
        return ["-m", "search.bench.steps", probe, json.dumps(kwargs), f"{step}.json"]

    def read_probe(self, step: Step, output: str) -> dict[str, Any]:
        return dict(json.loads((self.work / f"{step.name}.json").read_text()))

    def read_study(self, name: str, *, complete: int, more: bool = False) -> Reader:
        """States, best value, trial durations, checkpoints left; `complete` trials must be
        COMPLETE (`more`: at least, as when several workers each finish their last trial)."""
        def read(step: Step, output: str) -> dict[str, Any]:
            study = self.study(name)
            # A worker's trial that lost the race for the budget's last place ends at once,
            # FAIL "over budget" (search.study.optuna_study.over_budget): counted apart, not a
            # problem.
            every = study.get_trials(deepcopy=False)
            trials = [t for t in every if t.user_attrs.get(names.FAIL_REASON) != OVER_BUDGET]
            figures: dict[str, Any] = {"states": dict(Counter(t.state.name for t in trials))}
            if len(trials) < len(every):
                figures["over_budget"] = len(every) - len(trials)
            done = [t for t in trials if t.state.name == "COMPLETE"]
            if done:
                figures["best_val_accuracy"] = max(t.value for t in done if t.value is not None)
            figures["trial_seconds"] = [round(t.duration.total_seconds(), 1) for t in trials
                                        if t.duration is not None]
            left = list((self.work / "mlruns" / "checkpoints" / name).glob("*.pt"))
            figures["checkpoints_left"] = len(left)
            others = set(figures["states"]) - {"COMPLETE", "WAITING"}  # WAITING: not needed
            if others or len(done) < complete or (len(done) > complete and not more):
                figures["problem"] = (f"{complete}{' or more' if more else ''} COMPLETE trials "
                                      f"expected: {figures['states']}")
            if step.name == "compile":
                figures.update(self._compiled(trials))
            if step.name.startswith("trials_per_gpu"):
                figures.update(_per_hour(trials, step.wall_s))
            return figures
        return read

    def _compiled(self, trials: list[Any]) -> dict[str, Any]:
        """What each trial says of torch.compile: Optuna's user attribute, MLflow's tag."""
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{self.work / 'mlruns' / 'mlflow.db'}")
        attrs = [t.user_attrs.get(names.COMPILE) for t in trials]
        tags = [client.get_run(t.user_attrs[names.MLFLOW_RUN_ID]).data.tags.get("search.compile")
                if t.user_attrs.get(names.MLFLOW_RUN_ID) else None for t in trials]
        figures: dict[str, Any] = {"compile_attr": attrs, "compile_tag": tags,
                                   "compiled": sum(a == "compiled" for a in attrs)}
        if None in attrs or None in tags or attrs != tags:
            figures["problem"] = "a trial lacks its compile attribute or search.compile tag"
        return figures

    def read_refit(self, step: Step, output: str) -> dict[str, Any]:
        model = re.search(r"^model: (\S+)$", output, re.MULTILINE)
        accuracy = re.search(r"^\s+test_accuracy\s+([0-9.]+)$", output, re.MULTILINE)
        if model is None:
            return {"problem": "search.refit printed no 'model: URI' line"}
        return {"model_uri": model.group(1),
                "test_accuracy": float(accuracy.group(1)) if accuracy else None}


def _per_hour(trials: list[Any], wall_s: float) -> dict[str, float]:
    """Finished trials per hour over the whole command, and from the first trial's start to
    the last one's end (the workers' start-up left out)."""
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.duration]
    if not done:
        return {}
    span = (max(t.datetime_complete for t in done)
            - min(t.datetime_start for t in done)).total_seconds()
    return {"per_hour_command": 3600 * len(done) / wall_s,
            "per_hour_trials": 3600 * len(done) / span}


def _prep(work: Path, size: Size) -> dict[str, Any]:
    write_cifar(work / "data", train=size.train, test=size.test)
    write_weights(work / "resnet18.pt", backbone="resnet18")
    return {"train_images": size.train, "test_images": size.test}


def run_steps(runner: Runner, steps: Steps, *, cuda: bool) -> None:
    size, device = steps.size, steps.device
    prep = runner.call("prep", lambda: _prep(steps.work, size))

    def throughput(backbone: str, side: int, cap: float, bench: tuple[int, ...]) -> Step:
        name = f"throughput_{backbone}_{side}"
        batch, timed, warmup, rounds = bench
        return runner.run(name, cap, steps.probe(
            name, "throughput", device=device, backbone=backbone, resolution=side,
            batch_size=batch, steps=timed, warmup=warmup, rounds=rounds), read=steps.read_probe)

    throughput("resnet18", 32, CAPS["throughput_32"], size.bench)
    steps.enqueue("bench-search", list(VARIANTS))
    search = runner.run("search", CAPS["search"], steps.search(
        "bench-search", len(VARIANTS), "--checkpoint-every", "0"),
        read=steps.read_study("bench-search", complete=len(VARIANTS)), needs=(prep,))
    refit = runner.run("refit", CAPS["refit"], [
        "-m", "search.refit", "--study", "cifar10", "--name", "bench-search", "--data-dir",
        "data", "--weights", "resnet18.pt", "--device", device], read=steps.read_refit,
        needs=(search,))
    teacher = str(refit.figures.get("model_uri", ""))
    if teacher:
        steps.enqueue("bench-distill", list(DISTILL), teacher=teacher)
    runner.run("distill", CAPS["distill"], steps.search(
        "bench-distill", len(DISTILL), "--teacher", teacher),
        read=steps.read_study("bench-distill", complete=len(DISTILL)), needs=(refit,))
    # The budget, and as many again as the workers may start past it (each worker ends the
    # trial it has when the budget is met): the same configurations for every K.
    packed = [dict(VARIANTS[i % len(VARIANTS)])
              for i in range(size.pack_trials + max(size.per_gpu) - 1)]
    for k in size.per_gpu:
        name = f"bench-per-gpu-{k}"
        steps.enqueue(name, packed)
        more = ("--gpus", "0", "--trials-per-gpu", str(k)) if cuda else ("--workers", str(k))
        runner.run(f"trials_per_gpu_{k}", CAPS["trials_per_gpu"],
                   steps.search(name, size.pack_trials, *more),
                   read=steps.read_study(name, complete=size.pack_trials, more=True),
                   needs=(prep,))
    # As many pruned trials as fit in the step's limit, less 25 s to start and to close.
    runner.run("memory", CAPS["memory"], lambda limit: steps.probe(
        "memory", "memory", device=device, trials=size.memory_trials,
        seconds=max(limit - 25, 1), params=steps.plain), read=steps.read_probe, needs=(prep,))
    if cuda:
        runner.run("oom", CAPS["oom"], steps.probe(
            "oom", "oom", device=device, headroom_mib=1024,
            params={**steps.plain, "batch_size": 512, "freeze_depth": 0}),
            read=steps.read_probe, needs=(prep,))
    else:
        runner.add(Step("oom", status="not measured", note="a real CUDA out-of-memory needs a "
                                                           "GPU: not measured on cpu"))
    runner.run("cudnn", CAPS["cudnn"], steps.probe(
        "cudnn", "cudnn", device=device, images=size.cudnn_images, batch_size=size.batch_size),
        read=steps.read_probe)
    throughput("resnet18", size.large_side, CAPS["throughput_224"], size.bench_large)
    throughput("resnet50", size.large_side, CAPS["throughput_r50"], size.bench_large)
    steps.enqueue("bench-compile", [{}] * 3)
    # Last: the one step whose length is hard to know (Inductor compiles the training graph,
    # the evaluation graph, and again for every new shape); it gets what the budget has left.
    runner.run("compile", CAPS["compile"], steps.search("bench-compile", 3, "--compile"),
               read=steps.read_study("bench-compile", complete=3), needs=(prep,))


def run_gpu(*, device: str, size: str, workdir: Path, budget: float | None = None,
            out: Path = REPORT_DIR) -> int:
    """Every step on `device` ("cuda" or "cpu") at `size`, then the report in `out`.
    Returns 0 when every step succeeded (or was not measured on a CPU), else 1."""
    cuda, spec = device == "cuda", SIZES[size]
    budget = spec.budget if budget is None else budget
    logs = out / "gpu-logs"
    for folder in (workdir / "mlruns", logs):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    env = _environment(device)
    print(f"gpu: {env['device_name']} ({device}), size {size}, budget {budget:.0f}s; work "
          f"folder {workdir}", flush=True)
    runner = Runner(work=workdir, logs=logs, budget=budget, slack=spec.slack)
    run_steps(runner, Steps(workdir, device, spec), cuda=cuda)
    report = {**env, "size": size, "budget_s": budget, "size_settings": asdict(spec),
              "wall_s": round(time.monotonic() - started, 1),
              "steps": [asdict(s) for s in runner.steps],
              "targets": target_rows({s.name: s.figures for s in runner.steps}, cuda=cuda)}
    for row in report["targets"]:
        print(f"gpu: target {row['target']}: {row['wanted']}; measured {row['figure']}"
              f" -> {row['verdict']}", flush=True)
    skipped = [f"{s.name} ({s.note})" for s in runner.steps if s.status == "skipped"]
    if skipped:
        print(f"gpu: skipped: {'; '.join(skipped)}", flush=True)
    bad = [s.name for s in runner.steps if s.status not in ("ok", "not measured", "skipped")]
    md, js = write_report(out, report)
    print(f"gpu: {len(runner.steps) - len(bad) - len(skipped)} of {len(runner.steps)} steps "
          f"ok or not measured in {report['wall_s']:.0f}s"
          + (f"; not ok: {', '.join(bad)}" if bad else ""), flush=True)
    print(f"gpu: report {md} and {js}; step logs in {logs}", flush=True)
    return 1 if bad or skipped else 0


def _environment(device: str) -> dict[str, Any]:
    import mlflow
    import torch
    import torchvision

    name = (torch.cuda.get_device_name() if device == "cuda"
            else f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores")
    return {"device": device, "device_name": name, "date": time.strftime("%Y-%m-%d %H:%M"),
            "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                         "torchvision": torchvision.__version__,
                         "optuna": optuna.__version__, "mlflow": mlflow.__version__,
                         "cuda": torch.version.cuda or "none",
                         "cudnn": str(torch.backends.cudnn.version() or "none")}}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target_rows(figures: dict[str, dict[str, Any]], *, cuda: bool) -> list[dict[str, Any]]:
    """The issue's targets, each next to its figure; judged on a GPU only."""
    t32, mem, oom = (figures.get(k, {}) for k in ("throughput_resnet18_32", "memory", "oom"))
    one, two, four = (figures.get(f"trials_per_gpu_{k}", {}) for k in (1, 2, 4))
    tags: list[str | None] = figures.get("compile", {}).get("compile_tag") or []
    allocated = oom.get("allocated_mib", {})
    before, after = allocated.get("before"), allocated.get("after")
    rows: list[tuple[str, str, Any, Callable[[Any], bool], str]] = [
        ("ResNet-18 32x32 bf16, training images/s (H100/H200)", ">= 25,000",
         t32.get("ours_images_per_s"), lambda v: v >= 25_000, ""),
        ("ours / DataLoader + per-image PIL loop, 32 px", ">= 5x", t32.get("ratio"),
         lambda v: v >= 5, f"{t32.get('workers')} DataLoader workers"),
        ("trials per hour, 2 trials per GPU / 1 (trials alone)", ">= 1.5x",
         _ratio(two.get("per_hour_trials"), one.get("per_hour_trials")), lambda v: v >= 1.5,
         "over the whole command: "
         f"{fmt(_ratio(two.get('per_hour_command'), one.get('per_hour_command')))}x; 4 per "
         f"GPU: {fmt(_ratio(four.get('per_hour_trials'), one.get('per_hour_trials')))}x"),
        (f"allocated GPU memory after {mem.get('trials', 'N')} pruned trials in one worker "
         "vs after the first, %", "within 5% (after 50)", mem.get("growth_pct"),
         lambda v: abs(v) <= 5, mem.get("allocated", "")),
        ("--compile trials that stayed compiled", "all",
         f"{tags.count('compiled')} of {len(tags)}" if tags else None,
         lambda v: bool(tags) and tags.count("compiled") == len(tags), ""),
        ("out-of-memory trial: FAIL 'out of memory...', retry queued, memory back",
         "yes, within 5% or 32 MiB",
         f"{oom['state']}, retry queued {oom['retry_queued']}, {fmt(before)} -> "
         f"{fmt(after)} MiB" if "state" in oom else None,
         lambda v: (oom["state"] == "FAIL" and oom["retry_queued"]
                    and str(oom["fail_reason"]).startswith("out of memory")
                    and abs(after - before) <= max(0.05 * before, 32)), ""),
    ]
    table = []
    for target, wanted, figure, judge, note in rows:
        met = judge(figure) if cuda and figure is not None else None
        verdict = ("not measured" if figure is None else "not judged on a CPU" if not cuda
                   else "met" if met else "NOT met")
        table.append({"target": target, "wanted": wanted, "figure": fmt(figure), "met": met,
                      "verdict": verdict, "note": note})
    return table


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """gpu.json (everything) and gpu.md (for people) in `out`."""
    steps, versions = report["steps"], report["versions"]
    lines = [f"# GPU acceptance run: {report['device_name']}", "",
             f"`python -m search.bench --only gpu`, device {report['device']}, size "
             f"{report['size']}, {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s "
             f"budget, {report['date']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
             "", "## Targets", "", "| target | wanted | measured | verdict | note |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['target']} | {r['wanted']} | {r['figure']} | {r['verdict']} | {r['note']} |"
              for r in report["targets"]]
    lines += ["", "## Steps", "", "| step | status | exit | wall s | limit s | figures |",
              "| --- | --- | --- | --- | --- | --- |"]
    for s in steps:
        shown = "; ".join(f"{k} {fmt(v)}" for k, v in s["figures"].items())
        lines.append(f"| {s['name']} | {s['status']} | {fmt(s['exit_status'])} | "
                     f"{s['wall_s']:.1f} | {fmt(s['limit_s'])} | "
                     f"{'; '.join(filter(None, [s['note'], shown])).replace('|', '/')} |")
    for s in steps:
        if s["status"] not in ("ok", "not measured", "skipped"):
            lines += ["", f"### {s['name']}: {s['status']}", "", f"`{s['command']}`", "",
                      "```", s["tail"].rstrip()[-TAIL_CHARS:], "```"]
    lines += ["", "Commands, in the work folder:", ""]
    lines += [f"- {s['name']}: `{s['command']}`" for s in steps if s["command"]]
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "gpu.md", out / "gpu.json"
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return md, js

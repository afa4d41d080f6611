"""`python -m search.bench --only gpu` end to end on the CPU at its tiny size: every step runs
(the GPU-only ones say they were not measured), and the report holds what a user checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from search.bench.gpu import SIZES
from search.bench.suite import main

pytestmark = pytest.mark.slow  # real searches, processes or servers


def test_gpu_acceptance_command_runs_every_step_on_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--only", "gpu", "--device", "cpu", "--size", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "gpu: report mlruns/bench/gpu.md and mlruns/bench/gpu.json" in printed
    bench = tmp_path / "mlruns" / "bench"
    report = json.loads((bench / "gpu.json").read_text())
    markdown = (bench / "gpu.md").read_text()
    # Only the report lands in the user's folder: the searches ran in a work folder elsewhere.
    assert sorted(p.name for p in (tmp_path / "mlruns").iterdir()) == ["bench"]
    size, side = SIZES["tiny"], SIZES["tiny"].large_side

    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == [
        "prep", "throughput_resnet18_32", "search", "refit", "distill",
        *(f"trials_per_gpu_{k}" for k in size.per_gpu), "memory", "oom", "cudnn",
        f"throughput_resnet18_{side}", f"throughput_resnet50_{side}", "compile"]
    for name, step in steps.items():
        if name == "oom":  # a real CUDA out-of-memory needs a GPU: said, not faked
            assert step["status"] == "not measured"
            assert "not measured on cpu" in step["note"]
        else:
            assert (step["status"], step["exit_status"]) == ("ok", 0), (name, step["tail"])
            assert step["wall_s"] > 0 and step["command"]
        assert f"| {name} | {step['status']} |" in markdown
    figures = {name: step["figures"] for name, step in steps.items()}

    # The searches: every enqueued trial complete, each trial's checkpoint removed at its end.
    for name, trials in (("search", 3), ("distill", 2), ("compile", 3)):
        assert figures[name]["states"] == {"COMPLETE": trials}, name
        assert figures[name]["checkpoints_left"] == 0
    assert figures["refit"]["model_uri"].startswith(("models:/", "runs:/"))
    assert 0 <= figures["refit"]["test_accuracy"] <= 1
    compiled = figures["compile"]
    assert compiled["compile_tag"] == compiled["compile_attr"]  # MLflow and Optuna agree
    for value in compiled["compile_tag"]:
        assert value == "compiled" or value.startswith("fallback: ")
    for k in size.per_gpu:  # --workers K on a CPU; a worker may finish one trial past the budget
        packed = figures[f"trials_per_gpu_{k}"]
        assert packed["states"]["COMPLETE"] >= size.pack_trials
        assert set(packed["states"]) <= {"COMPLETE", "WAITING"}
        assert packed["per_hour_trials"] > 0 and packed["per_hour_command"] > 0
    assert figures["memory"]["states"] == {"PRUNED": size.memory_trials}
    assert figures["memory"]["allocated"] == "not measured on cpu"

    for name in ("throughput_resnet18_32", f"throughput_resnet18_{side}",
                 f"throughput_resnet50_{side}"):
        t = figures[name]
        for key in ("ours_images_per_s", "baseline_images_per_s", "ratio"):
            assert math.isfinite(t[key]) and t[key] > 0, (name, key)
        assert t["ours_weight_change"] > 0 and t["baseline_weight_change"] > 0
    for flag in ("off", "on"):
        assert figures["cudnn"][flag]["first_epoch_s"] > 0
        assert figures["cudnn"][flag]["second_epoch_images_per_s"] > 0

    assert {"python", "torch", "torchvision", "optuna", "mlflow", "cuda"} <= set(
        report["versions"])
    assert len(report["targets"]) == 6
    for row in report["targets"]:  # shown next to its figure, judged on a GPU only
        assert row["met"] is None
        assert row["verdict"] in ("not judged on a CPU", "not measured")
        assert f"| {row['target']} | {row['wanted']} |" in markdown

"""ImageNet-pretrained backbones, each cut into the same five stages by resolution: torchvision's
(`resnet18`, ...) and, with the optional `timm` extra installed, any convolutional timm model
(`timm:NAME`, e.g. `timm:resnet50.a1_in1k`).

Weights come from a local file (`--weights PATH`), from the library's cache or download
(torchvision: `$TORCH_HOME/hub/checkpoints`; timm: its own loading, mostly the Hugging Face cache),
or nowhere (`--no-pretrained`: random init). Every failure a user can fix is an `InputError` whose
one line names the file and the fix.
"""

from __future__ import annotations

import http.client
import itertools
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from objectives.errors import InputError, one_line
from objectives.models import NUM_STAGES, StagedNet, new_head
from objectives.timm_backbones import (
    check_timm,
    create_timm,
    fetch_timm,
    staged_timm,
    timm_cfg,
    timm_head_prefix,
    timm_model_name,
)

BACKBONES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "convnext_tiny",
)

# Where each stage ends in `features` (stage i is features[ends[i-1]:ends[i]]): each stage ends
# at one output resolution (1/2, 1/4, 1/8, 1/16, 1/32; ConvNeXt's stem is already at 1/4, so its
# stem and first block group are the first two stages).
_FEATURE_ENDS: dict[str, tuple[int, ...]] = {
    "mobilenet_v3_small": (1, 2, 4, 9, 13),
    "mobilenet_v3_large": (2, 4, 7, 13, 17),
    "efficientnet_b0": (2, 3, 4, 6, 9),
    "convnext_tiny": (1, 2, 4, 6, 8),
}


def _imagenet_stats() -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    preset = get_model_weights("resnet18").DEFAULT.transforms()
    (r, g, b), (sr, sg, sb) = preset.mean, preset.std
    return (r, g, b), (sr, sg, sb)


# Every backbone's ImageNet weights were trained on inputs normalised with these.
IMAGENET_MEAN, IMAGENET_STD = _imagenet_stats()


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise InputError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")


def check_backbone(name: str) -> None:
    """InputError (one line) unless `name` is a torchvision backbone of BACKBONES, or `timm:NAME`
    with timm installed and knowing NAME (an architecture, optionally with its pretrained tag)."""
    if timm_model_name(name) is None:
        _check_name(name)
    else:
        check_timm(name)


def backbone_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the inputs of `name` are normalised with: what its pretrained weights were
    trained on. torchvision's all use ImageNet's; a timm model says in its pretrained_cfg
    (several use 0.5 or CLIP's statistics instead)."""
    if timm_model_name(name) is None:
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = timm_cfg(name)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def weights_file(name: str) -> str:
    """The file name torchvision's default ImageNet weights for `name` download to."""
    _check_name(name)
    return os.path.basename(urllib.parse.urlparse(_default_weights(name).url).path)


def _default_weights(name: str) -> WeightsEnum:
    return get_model_weights(name).DEFAULT


def _split(
    name: str, model: nn.Module
) -> tuple[list[nn.Module], nn.Module | None, nn.Linear, str]:
    """(stages, neck, final Linear, its state-dict key prefix) of a torchvision model."""
    neck: nn.Module | None = None
    if name.startswith("resnet"):
        stem = [model.get_submodule(n) for n in ("conv1", "bn1", "relu", "maxpool")]
        stages = [nn.Sequential(*stem), *(model.get_submodule(f"layer{i}") for i in range(1, 5))]
        head, head_name = model.get_submodule("fc"), "fc"
    else:
        features, classifier = model.get_submodule("features"), model.get_submodule("classifier")
        assert isinstance(features, nn.Sequential) and isinstance(classifier, nn.Sequential)
        ends = _FEATURE_ENDS[name]
        stages = [features[a:b] for a, b in itertools.pairwise((0, *ends))]
        head, head_name = classifier[-1], f"classifier.{len(classifier) - 1}"
        if name.startswith("mobilenet"):
            # Pre-logit Linear + Hardswish + Dropout; the Linear needs the pooled map flattened.
            neck = nn.Sequential(nn.Flatten(), *classifier[:3])
        else:
            # EfficientNet's Dropout (kept so training matches torchvision) or ConvNeXt's
            # LayerNorm2d; ConvNeXt's Flatten after it is StagedNet's own flatten.
            neck = classifier[0]
    assert len(stages) == NUM_STAGES and isinstance(head, nn.Linear)
    return stages, neck, head, head_name + "."


def _backbone_state(
    name: str, state: Mapping[str, torch.Tensor], model: nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """The part of `state` that `model`'s backbone loads; InputError unless it fits exactly."""
    # The head is replaced, so its keys (of any shape) are ignored.
    timm_name = timm_model_name(name)
    if timm_name is None:
        head_prefix, library = _split(name, model)[3], "torchvision"
    else:
        head_prefix, library = timm_head_prefix(name, model), "timm"
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(head_prefix)}
    given = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    # Old checkpoints lack BatchNorm's counter; loading fills it in.
    missing = [k for k in expected if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} {tuple(v.shape)} instead of {tuple(expected[k].shape)}"
        for k, v in given.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                           ("wrong shapes", shapes))
        if keys
    ]
    if problems:
        raise InputError(
            f"{source} does not fit backbone {name}: {'; '.join(problems)}; "
            f"it must be a state dict of {library}'s {timm_name or name}"
        )
    return given


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file: also inside {"state_dict": ...} or {"model": ...}."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise InputError(
            f"{source} is not a state dict (parameter names to tensors): "
            "delete it or re-save it with torch.save(model.state_dict(), PATH)"
        )
    prefix = "module."  # DistributedDataParallel's wrapper
    if all(k.startswith(prefix) for k in obj):
        return {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _read_file(path: Path, *, what: str = "weights file",
               missing: str = "pass an existing file to --weights, or --no-pretrained to start "
                              "from random weights") -> object:
    if not path.exists():
        raise InputError(f"{what} {path}: no such file; {missing}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load fails in many ways on bad bytes; all mean "unreadable"
        raise InputError(
            f"{what} {path} cannot be read ({one_line(e)}): it is corrupt, truncated or "
            "not a torch.save file; delete it or re-save it with "
            "torch.save(model.state_dict(), PATH)"
        ) from e


def read_state_dict(path: Path, *, what: str, missing: str) -> dict[str, torch.Tensor]:
    """The state dict in a torch.save file, or an InputError naming `what` and the fix."""
    return _unwrap(_read_file(path, what=what, missing=missing), f"{what} {path}")


def _cached_path(name: str) -> Path:
    # Where torch.hub looks before downloading; get_dir() follows $TORCH_HOME at each call.
    return Path(torch.hub.get_dir()) / "checkpoints" / weights_file(name)


def _fetch(name: str) -> object:
    """torchvision's default weights: from the hub cache when there, else downloaded."""
    weights, cached = _default_weights(name), _cached_path(name)
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except Exception as e:
        if cached.is_file():  # there before the call, or downloaded but unreadable
            raise InputError(
                f"cached weights {cached} cannot be read ({one_line(e)}): delete the file so it "
                "is downloaded again, or pass --weights PATH to use a local file"
            ) from e
        if not isinstance(e, (OSError, RuntimeError, http.client.HTTPException)):
            raise  # URLError and socket errors are OSErrors; anything else is a bug
        raise InputError(
            f"cannot download the pretrained weights of {name} ({one_line(e)}): "
            f"put {cached.name} (from {weights.url}) at {cached}, or pass --weights PATH to use "
            "a local file, or --no-pretrained to start from random weights"
        ) from e


def load_weights(
    name: str, *, weights: str | Path | None = None, pretrained: bool = True
) -> dict[str, torch.Tensor] | None:
    """The state dict of `name` from `weights`, else torchvision's ImageNet weights if
    `pretrained`, else None (random init). Checked to fit the backbone (head keys aside)."""
    check_backbone(name)
    timm_name = timm_model_name(name)
    if weights is not None:
        source = f"weights file {weights}"
        obj = _read_file(Path(weights))
    elif pretrained and timm_name is not None:
        source = f"timm's pretrained weights of {timm_name}"
        obj = fetch_timm(name)
    elif pretrained:
        source = f"cached weights {_cached_path(name)}"
        obj = _fetch(name)
    else:
        return None
    state = _unwrap(obj, source)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        reference = create_timm(name) if timm_name else get_model(name, weights=None)
    _backbone_state(name, state, reference, source)
    return state


def build_backbone(
    name: str, num_classes: int, *, state: dict[str, torch.Tensor] | None, seed: int
) -> StagedNet:
    """`name` as a StagedNet of NUM_STAGES stages with `state` loaded (None: random init from
    `seed`) and a new `num_classes` head initialised from `seed`; global RNG is left alone."""
    check_backbone(name)
    timm_name = timm_model_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_timm(name) if timm_name else get_model(name, weights=None)
    if state is not None:
        given = _backbone_state(name, state, model, "the given state")
        model.load_state_dict(given, strict=False)
    if timm_name is None:
        stages, neck, head, _ = _split(name, model)
        net = StagedNet(stages, head, neck)
    else:
        net = staged_timm(name, model)
    new_head(net, num_classes, seed=seed)
    return net


def whole_model(name: str, num_classes: int) -> nn.Module:
    """The library's own model of `name` (torchvision's or timm's, not cut into stages) with a
    `num_classes` head and random weights: what a plainly saved state dict of it loads into."""
    check_backbone(name)
    if timm_model_name(name) is None:
        return get_model(name, weights=None, num_classes=num_classes)
    return create_timm(name, num_classes=num_classes)

"""ImageNet-pretrained backbones, each cut into the same five stages by resolution: torchvision's
(`resnet18`, ...) and, with the optional `timm` extra installed, any convolutional timm model
(`timm:NAME`, e.g. `timm:resnet50.a1_in1k`).

Weights come from a local file (`--weights PATH`), from the library's cache or download
(torchvision: `$TORCH_HOME/hub/checkpoints`; timm: its own loading, mostly the Hugging Face cache),
or nowhere (`--no-pretrained`: random init). Every failure a user can fix is an `InputError` whose
one line names the file and the fix.
"""

from __future__ import annotations

import difflib
import functools
import http.client
import itertools
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights

from objectives.errors import InputError
from objectives.models import StagedNet, new_head

BACKBONES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "convnext_tiny",
)
# The same number of stages for every backbone, so freeze depth 0..5 means the same thing for all
# of them (5 = linear probe).
NUM_STAGES = 5

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
    model_name = _timm_name(name)
    if model_name is None:
        _check_name(name)
        return
    timm = _import_timm(name)
    if not model_name or not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"unknown timm model {model_name!r} in {name!r}: {hint}list them with "
            "python -c \"import timm; print(timm.list_models('PATTERN*'))\""
        )


def backbone_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the inputs of `name` are normalised with: what its pretrained weights were
    trained on. torchvision's all use ImageNet's; a timm model says in its pretrained_cfg
    (several use 0.5 or CLIP's statistics instead)."""
    if _timm_name(name) is None:
        return IMAGENET_MEAN, IMAGENET_STD
    cfg = _timm_cfg(name)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def weights_file(name: str) -> str:
    """The file name torchvision's default ImageNet weights for `name` download to."""
    _check_name(name)
    return os.path.basename(urllib.parse.urlparse(_default_weights(name).url).path)


def _default_weights(name: str) -> WeightsEnum:
    return get_model_weights(name).DEFAULT


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if first.startswith("Weights only load failed"):
        # Its advice (weights_only=False) would run arbitrary pickled code: keep just the fact.
        first = "weights-only unpickling failed"
    return f"{type(error).__name__}: {first}"[:160]


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
    timm_name = _timm_name(name)
    if timm_name is None:
        head_prefix, library = _split(name, model)[3], "torchvision"
    else:
        head_prefix, library = _timm_head_prefix(name, model), "timm"
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
    timm_name = _timm_name(name)
    if weights is not None:
        source = f"weights file {weights}"
        obj = _read_file(Path(weights))
    elif pretrained and timm_name is not None:
        source = f"timm's pretrained weights of {timm_name}"
        obj = _fetch_timm(name)
    elif pretrained:
        source = f"cached weights {_cached_path(name)}"
        obj = _fetch(name)
    else:
        return None
    state = _unwrap(obj, source)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        reference = _create_timm(name) if timm_name else get_model(name, weights=None)
    _backbone_state(name, state, reference, source)
    return state


def build_backbone(
    name: str, num_classes: int, *, state: dict[str, torch.Tensor] | None, seed: int
) -> StagedNet:
    """`name` as a StagedNet of NUM_STAGES stages with `state` loaded (None: random init from
    `seed`) and a new `num_classes` head initialised from `seed`; global RNG is left alone."""
    check_backbone(name)
    timm_name = _timm_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create_timm(name) if timm_name else get_model(name, weights=None)
    if state is not None:
        given = _backbone_state(name, state, model, "the given state")
        model.load_state_dict(given, strict=False)
    if timm_name is None:
        stages, neck, head, _ = _split(name, model)
        net = StagedNet(stages, head, neck)
    else:
        net = _staged_timm(name, model)
    new_head(net, num_classes, seed=seed)
    return net


def whole_model(name: str, num_classes: int) -> nn.Module:
    """The library's own model of `name` (torchvision's or timm's, not cut into stages) with a
    `num_classes` head and random weights: what a plainly saved state dict of it loads into."""
    check_backbone(name)
    if _timm_name(name) is None:
        return get_model(name, weights=None, num_classes=num_classes)
    return _create_timm(name, num_classes=num_classes)


# timm backbones (`timm:NAME`). timm is an optional extra, so it is imported only on use.

TIMM_PREFIX = "timm:"


def _timm_name(name: str) -> str | None:
    """NAME of a `timm:NAME` backbone, None for a torchvision one."""
    return name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else None


def _import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise InputError(
            f"{name} needs timm, which is not installed: pip install 'finetune-search[timm]'"
        ) from None
    return timm


def _create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm's model of `timm:NAME` (random weights unless kwargs say pretrained=True)."""
    check_backbone(name)
    model: nn.Module = _import_timm(name).create_model(_timm_name(name), **kwargs)
    return model


@functools.cache
def _timm_cfg(name: str) -> dict[str, Any]:
    with torch.device("meta"):  # the config only
        model = _create_timm(name)
    return dict(model.pretrained_cfg)  # type: ignore[arg-type]


def _timm_head_prefix(name: str, model: nn.Module) -> str:
    """The state-dict prefix of the classifier timm's `model` ends in ("fc.", "head.fc.")."""
    classifier = model.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Linear):
        raise InputError(
            f"timm model {_timm_name(name)} ends in a {type(classifier).__name__}, not one "
            "linear classifier: pick another model (a CNN such as timm:resnet50)"
        )
    module = next(n for n, m in model.named_modules() if m is classifier)
    return module + "."


def _fetch_timm(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of `name` through timm's own loading (its cache, else a
    download), as the state dict of timm's model."""
    timm_name, cfg = _timm_name(name), _timm_cfg(name)
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        # timm would warn and go on with random weights: say so instead.
        raise InputError(
            f"timm has no pretrained weights for {timm_name}: pass --weights PATH to use a local "
            "file, or --no-pretrained to start from random weights"
        )
    try:
        model = _create_timm(name, pretrained=True)
    except Exception as e:
        # Offline, huggingface_hub raises LocalEntryNotFoundError and torch.hub URLError: both
        # OSErrors; an unreadable cached file a RuntimeError. Anything else is a bug.
        if not isinstance(e, (OSError, RuntimeError, http.client.HTTPException)):
            raise
        raise InputError(
            f"cannot load timm's pretrained weights of {timm_name} ({one_line(e)}): run once "
            "with network access so that timm caches them, or pass --weights PATH to use a "
            "local file, or --no-pretrained to start from random weights"
        ) from e
    return model.state_dict()


def _timm_chain(model: nn.Module, features: set[str]) -> list[tuple[str, nn.Module]]:
    """`model`'s children in order, a Sequential holding a feature module opened one level
    ("blocks" -> "blocks.0", ...), as timm's own features_only wrapper (FeatureDictNet) walks
    them; a stem is left whole, so it can be a stage of its own."""
    chain: list[tuple[str, nn.Module]] = []
    for child_name, child in model.named_children():
        if isinstance(child, nn.Sequential) and any(
            f.startswith(child_name + ".") for f in features
        ):
            chain.extend((f"{child_name}.{n}", m) for n, m in child.named_children())
        else:
            chain.append((child_name, child))
    return chain


def _stage_ends(points: list[int], reductions: list[int]) -> list[int]:
    """Where each of the NUM_STAGES stages ends (exclusive) in the chain, from the feature points
    (chain indices of timm's feature_info modules) and their reductions. The rule, in order:

    1. a stage ends at each feature point timm's feature_info reports;
    2. points of the same reduction are one stage (ending at the last of them), so that, as for
       the torchvision backbones, each stage ends at one output resolution;
    3. more than NUM_STAGES left: the stages nearest the input are merged;
    4. fewer (ConvNeXt's stem already reduces by 4, so its features start at 1/4): the first
       stage of more than one module is split after its first module (so ConvNeXt's stem is a
       stage, as for torchvision's ConvNeXt), again while needed; with nothing left to split,
       empty stages go first, so the deepest stages keep their place for layer-wise rates.

    An empty stage has the same end as the one before it (0 for the first).
    """
    ends = [p + 1 for i, p in enumerate(points)
            if i + 1 == len(points) or reductions[i + 1] != reductions[i]]
    del ends[:max(0, len(ends) - NUM_STAGES)]
    while len(ends) < NUM_STAGES:
        starts = [0, *ends[:-1]]
        wide = [i for i, (a, b) in enumerate(zip(starts, ends, strict=True)) if b - a > 1]
        if not wide:
            return [0] * (NUM_STAGES - len(ends)) + ends
        ends.insert(wide[0], starts[wide[0]] + 1)
    return ends


_CUT_CHECKED: set[str] = set()


def _staged_timm(name: str, model: nn.Module) -> StagedNet:
    """timm's `model` as a StagedNet: stages cut at its feature_info points (see _stage_ends),
    the modules after the last one up to the global pool joining the last stage (EfficientNet's
    conv_head), and those from the pool on, classifier removed, as the neck (MobileNetV3's
    conv_head, ConvNeXt's norm). StagedNet average-pools first, and averaging a 1x1 map again
    changes nothing, so the neck computes timm's own forward_head(pre_logits=True)."""
    timm_name, timm = _timm_name(name), _import_timm(name)
    not_a_chain = (
        f"timm model {timm_name} cannot be cut into stages (its forward is not a chain of "
        "its modules, as in vision transformers): pick a CNN such as timm:resnet50"
    )
    head = model.get_classifier()  # type: ignore[operator]
    _timm_head_prefix(name, model)  # InputError unless it is one Linear
    model.reset_classifier(0)  # type: ignore[operator]  # the classifier becomes an Identity
    info = list(model.feature_info)  # type: ignore[arg-type]
    chain = _timm_chain(model, {f["module"] for f in info})
    names = [n for n, _ in chain]
    # Parameters of the model's own (a ViT's position embedding) are used outside any module.
    if (any(f["module"] not in names for f in info)
            or next(model.parameters(recurse=False), None) is not None):
        raise InputError(not_a_chain)
    points = [names.index(f["module"]) for f in info]
    pools = [i for i, (_, m) in enumerate(chain) if i > points[-1] and any(
        isinstance(sub, timm.layers.SelectAdaptivePool2d) for sub in m.modules())]
    if not pools:
        raise InputError(not_a_chain)
    pool_types = {sub.pool_type for _, m in chain[pools[0]:]
                  for sub in m.modules() if isinstance(sub, timm.layers.SelectAdaptivePool2d)}
    if not pool_types <= {"avg", "fast", "fastavg"}:
        raise InputError(f"timm model {timm_name} pools with {'/'.join(sorted(pool_types))}, "
                         "not an average: pick another model")
    ends = _stage_ends(points, [f["reduction"] for f in info])
    ends[-1] = pools[0]
    modules = [m for _, m in chain]
    stages = [nn.Sequential(*modules[a:b]) if b > a else nn.Identity()
              for a, b in itertools.pairwise((0, *ends))]
    neck = modules[pools[0]:]
    drop = getattr(model, "drop_rate", 0.0)
    if isinstance(drop, float) and drop > 0:
        # Dropout before the classifier that timm's forward_head applies as a function (GhostNet
        # defaults to 0.2): a module here, so that training matches timm's.
        neck.append(nn.Dropout(drop))
    net = StagedNet(stages, head, nn.Sequential(*neck))
    if name not in _CUT_CHECKED:
        _check_cut(name, model, net, not_a_chain)
        _CUT_CHECKED.add(name)
    return net


def _check_cut(name: str, model: nn.Module, net: StagedNet, not_a_chain: str) -> None:
    """Once per model and process: the cut computes what timm's own forward does, on one small
    seeded input in eval mode (no dropout, no BatchNorm update, global RNG untouched). The
    structural checks above cannot see a forward that, say, concatenates two stages' outputs."""
    side = min(128, int(_timm_cfg(name)["input_size"][-1]))  # some need more than 32 pixels
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0))
    training = net.training
    net.eval()
    model.eval()  # `model` is not a submodule of `net`, and its forward_head reads its flag
    try:
        with torch.no_grad():
            expected = model.forward_head(  # type: ignore[operator]
                model.forward_features(x), pre_logits=True)  # type: ignore[operator]
            got = net.features(x)
        same = got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-4,
                                                              atol=1e-5)
    except Exception as e:  # shapes the chain cannot take: the same answer
        raise InputError(f"{not_a_chain} ({one_line(e)})") from e
    finally:
        net.train(training)
        model.train(training)
    if not same:
        raise InputError(not_a_chain)

"""timm backbones (`--backbone timm:NAME`), cut into the same stages as the torchvision ones.

timm is an optional extra (`pip install 'finetune-search[timm]'`), so it is imported only on
use; objectives.backbones dispatches here for names with the `timm:` prefix.
"""

from __future__ import annotations

import difflib
import functools
import http.client
import itertools
from typing import Any

import torch
from torch import nn

from objectives.errors import InputError, one_line
from objectives.models import NUM_STAGES, StagedNet

TIMM_PREFIX = "timm:"


def timm_model_name(name: str) -> str | None:
    """NAME of a `timm:NAME` backbone, None for a torchvision one."""
    return name[len(TIMM_PREFIX):] if name.startswith(TIMM_PREFIX) else None


def import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError:
        raise InputError(
            f"{name} needs timm, which is not installed: pip install 'finetune-search[timm]'"
        ) from None
    return timm


def check_timm(name: str) -> None:
    """InputError (one line) unless timm is installed and knows the NAME of `timm:NAME` (an
    architecture, optionally with its pretrained tag)."""
    model_name = timm_model_name(name) or ""
    timm = import_timm(name)
    if not model_name or not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"unknown timm model {model_name!r} in {name!r}: {hint}list them with "
            "python -c \"import timm; print(timm.list_models('PATTERN*'))\""
        )


def create_timm(name: str, **kwargs: Any) -> nn.Module:
    """timm's model of `timm:NAME` (random weights unless kwargs say pretrained=True)."""
    check_timm(name)
    model: nn.Module = import_timm(name).create_model(timm_model_name(name), **kwargs)
    return model


@functools.cache
def timm_cfg(name: str) -> dict[str, Any]:
    with torch.device("meta"):  # the config only
        model = create_timm(name)
    return dict(model.pretrained_cfg)  # type: ignore[arg-type]


def timm_head_prefix(name: str, model: nn.Module) -> str:
    """The state-dict prefix of the classifier timm's `model` ends in ("fc.", "head.fc.")."""
    classifier = model.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Linear):
        raise InputError(
            f"timm model {timm_model_name(name)} ends in a {type(classifier).__name__}, not one "
            "linear classifier: pick another model (a CNN such as timm:resnet50)"
        )
    module = next(n for n, m in model.named_modules() if m is classifier)
    return module + "."


def fetch_timm(name: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights of `name` through timm's own loading (its cache, else a
    download), as the state dict of timm's model."""
    timm_name, cfg = timm_model_name(name), timm_cfg(name)
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        # timm would warn and go on with random weights: say so instead.
        raise InputError(
            f"timm has no pretrained weights for {timm_name}: pass --weights PATH to use a local "
            "file, or --no-pretrained to start from random weights"
        )
    try:
        model = create_timm(name, pretrained=True)
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


def staged_timm(name: str, model: nn.Module) -> StagedNet:
    """timm's `model` as a StagedNet: stages cut at its feature_info points (see _stage_ends),
    the modules after the last one up to the global pool joining the last stage (EfficientNet's
    conv_head), and those from the pool on, classifier removed, as the neck (MobileNetV3's
    conv_head, ConvNeXt's norm). StagedNet average-pools first, and averaging a 1x1 map again
    changes nothing, so the neck computes timm's own forward_head(pre_logits=True)."""
    timm_name, timm = timm_model_name(name), import_timm(name)
    not_a_chain = (
        f"timm model {timm_name} cannot be cut into stages (its forward is not a chain of "
        "its modules, as in vision transformers): pick a CNN such as timm:resnet50"
    )
    head = model.get_classifier()  # type: ignore[operator]
    timm_head_prefix(name, model)  # InputError unless it is one Linear
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
    side = min(128, int(timm_cfg(name)["input_size"][-1]))  # some need more than 32 pixels
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

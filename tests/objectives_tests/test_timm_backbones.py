"""timm backbones (`--backbone timm:NAME`) as five-stage StagedNets, and loading their weights.

timm's tiny `test_*` models (random weights, built in milliseconds) stand in for real ones. No
test reaches the network: the Hugging Face hub is put in offline mode over an empty cache and
torch.hub's download fails, so timm's pretrained loading fails as it does on an offline machine.
"""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from objectives.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_STAGES,
    backbone_stats,
    build_backbone,
    check_backbone,
    load_weights,
    whole_model,
)
from objectives.errors import InputError
from objectives.models import StagedNet, freeze, layerwise_groups, trainable_parameters
from objectives.timm_backbones import _stage_ends

timm = pytest.importorskip("timm")

NUM_CLASSES = 3
SEED = 5
# Plain ResNet (five feature points), ConvNeXt (four: its stem becomes a stage), EfficientNet
# (conv_head after the last point, before the pool) and MobileNetV3 (conv_head after the pool).
MODELS = ("test_resnet", "test_convnext", "test_efficientnet", "mobilenetv3_small_050")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("offline test: downloads are disabled")

    # huggingface_hub reads these at each call; its environment variables only at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def timm_model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name).eval()


def timm_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def one_line(error: pytest.ExceptionInfo[InputError]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", MODELS)
def test_five_stages_a_new_head_and_a_forward_pass_at_32_pixels(name: str) -> None:
    rng = torch.random.get_rng_state()
    net = build_backbone(f"timm:{name}", NUM_CLASSES, state=None, seed=SEED)
    assert torch.equal(torch.random.get_rng_state(), rng)  # global RNG left alone
    assert isinstance(net, StagedNet) and len(net.stages) == NUM_STAGES
    assert all(any(True for _ in stage.parameters()) for stage in net.stages)  # none empty
    assert isinstance(net.head, nn.Linear) and net.head.out_features == NUM_CLASSES
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_the_stages_compute_timms_own_features(name: str) -> None:
    net = build_backbone(f"timm:{name}", NUM_CLASSES, state=None, seed=SEED).eval()
    reference = timm_model(name, seed=SEED)  # the same random init as the seeded build
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = net.features(x)
    torch.testing.assert_close(got, timm_features(reference, x), rtol=1e-4, atol=1e-5)


def test_convnexts_stem_is_a_stage_of_its_own() -> None:
    net = build_backbone("timm:test_convnext", NUM_CLASSES, state=None, seed=SEED)
    stem = timm_model("test_convnext").stem
    assert [p.shape for p in net.stages[0].parameters()] == [p.shape for p in stem.parameters()]


@pytest.mark.parametrize("name", ("test_resnet", "test_convnext"))
@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_freezing_depth_k_freezes_exactly_the_first_k_stages(name: str, depth: int) -> None:
    net = build_backbone(f"timm:{name}", NUM_CLASSES, state=None, seed=SEED)
    freeze(net, depth)
    frozen = {id(p) for p in net.parameters() if not p.requires_grad}
    first_k = {id(p) for stage in net.stages[:depth] for p in stage.parameters()}
    neck = {id(p) for p in net.neck.parameters()} if net.neck is not None else set()
    assert frozen == (first_k | neck if depth == NUM_STAGES else first_k)
    assert all(p.requires_grad for p in net.head.parameters())
    # Layer-wise rates cover every trainable parameter, the head at the peak.
    groups = layerwise_groups(net, 0.1, 0.5)
    assert sum(len(g["params"]) for g in groups) == len(trainable_parameters(net))
    assert groups[0]["lr"] == 0.1


@pytest.mark.parametrize(
    ("reductions", "ends"),
    [
        ((2, 4, 8, 16, 32), [2, 3, 4, 5, 6]),  # one point per stage (the stem in the first)
        ((4, 8, 16, 32), [1, 2, 3, 4, 5]),  # four: the first stage (stem + stage) split
        ((2, 2, 4, 8, 16, 32), [3, 4, 5, 6, 7]),  # one reduction, one stage
        ((1, 2, 4, 8, 16, 32), [3, 4, 5, 6, 7]),  # six: the two nearest the input merged
    ],
)
def test_the_stage_rule(reductions: tuple[int, ...], ends: list[int]) -> None:
    # The chain is a stem (index 0) and then one module per feature point (1, 2, ...).
    assert _stage_ends(list(range(1, len(reductions) + 1)), list(reductions)) == ends


def test_too_few_modules_to_split_pads_empty_stages_first() -> None:
    assert _stage_ends([0, 1, 2], [8, 16, 32]) == [0, 0, 1, 2, 3]


def test_the_weights_file_loads_and_the_head_is_replaced(tmp_path: Path) -> None:
    saved = timm_model("test_resnet", seed=123)  # 1000 classes, as timm's ImageNet weights
    path = tmp_path / "test_resnet.pt"
    torch.save(saved.state_dict(), path)
    state = load_weights("timm:test_resnet", weights=path)
    assert state is not None and torch.equal(state["conv1.0.weight"],
                                             saved.state_dict()["conv1.0.weight"])
    net = build_backbone("timm:test_resnet", NUM_CLASSES, state=state, seed=SEED).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        got = net.features(x)
    torch.testing.assert_close(got, timm_features(saved, x), rtol=1e-4, atol=1e-5)
    backbone = torch.cat([p.detach().flatten() for p in net.backbone_parameters()])
    expected = torch.cat([p.detach().flatten() for n, p in saved.named_parameters()
                          if not n.startswith("fc.")])
    assert torch.equal(backbone.sort().values, expected.sort().values)
    assert net.head.weight.shape == (NUM_CLASSES, saved.fc.in_features)


def test_a_file_of_another_model_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(InputError) as error:
        load_weights("timm:test_resnet", weights=path)
    message = one_line(error)
    assert f"weights file {path} does not fit backbone timm:test_resnet" in message
    assert "it must be a state dict of timm's test_resnet" in message


def test_a_corrupt_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as error:
        load_weights("timm:test_resnet", weights=path)
    assert f"weights file {path} cannot be read" in one_line(error)


def test_offline_pretrained_weights_are_one_line_naming_the_model_and_the_fix() -> None:
    with pytest.raises(InputError) as error:
        load_weights("timm:test_resnet", pretrained=True)
    message = one_line(error)
    assert message.startswith("cannot load timm's pretrained weights of test_resnet")
    assert "network access" in message and "--weights PATH" in message


def test_a_model_without_pretrained_weights_says_so() -> None:
    with pytest.raises(InputError) as error:
        load_weights("timm:lcnet_035", pretrained=True)
    assert "timm has no pretrained weights for lcnet_035" in one_line(error)


def test_no_pretrained_is_random_init() -> None:
    assert load_weights("timm:test_resnet", pretrained=False) is None


def test_timms_own_normalisation() -> None:
    assert backbone_stats("timm:test_resnet") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_stats("timm:test_efficientnet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert backbone_stats("resnet18") == (IMAGENET_MEAN, IMAGENET_STD)


def test_a_teacher_saved_as_timms_whole_model() -> None:
    model = whole_model("timm:test_resnet", NUM_CLASSES).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vgg99", "unknown backbone 'vgg99'; known backbones: resnet18, resnet34, resnet50"),
        ("timm:not_a_model_at_all", "unknown timm model 'not_a_model_at_all' in "
                                    "'timm:not_a_model_at_all'"),
        ("timm:resnet5", "did you mean resnet"),
        ("timm:", "unknown timm model ''"),
    ],
)
def test_unknown_names(name: str, expected: str) -> None:
    with pytest.raises(InputError) as error:
        check_backbone(name)
    assert expected in one_line(error)


def test_known_names_pass() -> None:
    for name in ("resnet18", "timm:test_resnet", "timm:resnet50.a1_in1k"):
        check_backbone(name)


def test_timm_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(InputError) as error:
        check_backbone("timm:test_resnet")
    assert one_line(error) == ("timm:test_resnet needs timm, which is not installed: "
                               "pip install 'finetune-search[timm]'")
    check_backbone("resnet18")  # torchvision's need no timm


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("test_vit", "timm model test_vit cannot be cut into stages"),
        ("dla34", "timm model dla34 ends in a Conv2d, not one linear classifier"),
    ],
)
def test_models_that_are_not_a_chain_of_stages_are_refused(name: str, expected: str) -> None:
    with pytest.raises(InputError) as error:
        build_backbone(f"timm:{name}", NUM_CLASSES, state=None, seed=SEED)
    assert expected in one_line(error)

"""torchvision backbones as five-stage StagedNets, and loading their weights offline.

No test reaches the network: every test runs with torch.hub's download replaced by one that
fails, and weights are torch.save'd files of randomly initialised torchvision models.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.convnext import LayerNorm2d

from objectives.backbones import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_STAGES,
    build_backbone,
    load_weights,
    weights_file,
)
from objectives.errors import InputError
from objectives.models import StagedNet, freeze, trainable_parameters

NUM_CLASSES = 3
SEED = 5


class Downloads:
    def __init__(self) -> None:
        self.urls: list[str] = []

    def __call__(self, url: str, dst: str, *args: object, **kwargs: object) -> None:
        self.urls.append(url)
        raise urllib.error.URLError("offline test: downloads are disabled")


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Downloads:
    downloads = Downloads()
    monkeypatch.setattr(torch.hub, "download_url_to_file", downloads)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return downloads


def _final_linear(model: nn.Module) -> nn.Module:
    if hasattr(model, "fc"):
        return model.get_submodule("fc")
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Sequential)
    return classifier[-1]


class Built:
    def __init__(self, name: str) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.reference = get_model(name, weights=None).eval()
        self.net = build_backbone(
            name, NUM_CLASSES, state=self.reference.state_dict(), seed=SEED
        )


@pytest.fixture(scope="module", params=BACKBONES)
def built(request: pytest.FixtureRequest) -> Built:
    return Built(request.param)


def test_every_backbone_has_five_stages_and_a_new_head(built: Built) -> None:
    assert len(built.net.stages) == NUM_STAGES == 5
    assert isinstance(built.net.head, nn.Linear)
    assert built.net.head.out_features == NUM_CLASSES
    assert built.net.head.in_features == _final_linear(built.reference).in_features


def test_stages_and_neck_reproduce_torchvision_forward(built: Built) -> None:
    captured: list[torch.Tensor] = []
    hook = _final_linear(built.reference).register_forward_pre_hook(
        lambda module, args: captured.append(args[0])
    )
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    built.net.eval()
    try:
        with torch.no_grad():
            built.reference(x)
            features = built.net.features(x)
    finally:
        hook.remove()
    (pre_logits,) = captured
    torch.testing.assert_close(features, pre_logits, rtol=0, atol=1e-6)
    assert built.net(x).shape == (2, NUM_CLASSES)


def test_head_is_seeded(built: Built) -> None:
    def linear(seed: int) -> nn.Linear:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return nn.Linear(built.net.head.in_features, NUM_CLASSES)

    assert torch.equal(built.net.head.weight, linear(SEED).weight)
    assert torch.equal(built.net.head.bias, linear(SEED).bias)
    assert not torch.equal(built.net.head.weight, linear(SEED + 1).weight)


@pytest.mark.parametrize("depth", range(NUM_STAGES + 1))
def test_freeze_depth(built: Built, depth: int) -> None:
    net = built.net
    freeze(net, depth)
    net.eval()
    net.train()
    for i, stage in enumerate(net.stages):
        assert {p.requires_grad for p in stage.parameters()} == {i >= depth}, f"stage {i}"
        assert {m.training for m in stage.modules()} == {i >= depth}, f"stage {i}"
    if net.neck is not None:
        probe = depth == NUM_STAGES
        assert all(p.requires_grad != probe for p in net.neck.parameters())
        assert {m.training for m in net.neck.modules()} == {not probe}
    assert net.head.training and all(p.requires_grad for p in net.head.parameters())
    net.eval()
    assert not any(m.training for m in net.modules())


def test_trainable_parameters_shrink_with_depth(built: Built) -> None:
    counts = []
    for depth in range(NUM_STAGES + 1):
        freeze(built.net, depth)
        counts.append(sum(p.numel() for p in trainable_parameters(built.net)))
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)
    assert counts[-1] == sum(p.numel() for p in built.net.head.parameters())


def test_backbone_parameters_are_stages_and_neck(built: Built) -> None:
    net = built.net
    expected = {id(p) for p in net.stages.parameters()}
    if net.neck is not None:
        expected |= {id(p) for p in net.neck.parameters()}
    assert {id(p) for p in net.backbone_parameters()} == expected
    assert not expected & {id(p) for p in net.head.parameters()}


def test_necks_are_what_torchvision_applies_after_pooling(built: Built) -> None:
    kinds = {"mobilenet": nn.Sequential, "efficientnet": nn.Dropout, "convnext": LayerNorm2d}
    name = type(built.reference).__name__.lower()
    kind = next((k for prefix, k in kinds.items() if name.startswith(prefix)), None)
    if kind is None:
        assert built.net.neck is None
    else:
        assert isinstance(built.net.neck, kind)


def test_build_leaves_global_rng_alone_and_is_seeded() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    a = build_backbone("resnet18", 4, state=None, seed=7)
    assert torch.equal(torch.rand(5), expected)
    b = build_backbone("resnet18", 4, state=None, seed=7)
    c = build_backbone("resnet18", 4, state=None, seed=8)
    a_state, b_state, c_state = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(v, b_state[k]) for k, v in a_state.items())
    assert not torch.equal(a_state["stages.0.0.weight"], c_state["stages.0.0.weight"])


def test_imagenet_stats_are_torchvisions_for_every_backbone() -> None:
    for name in BACKBONES:
        preset = get_model_weights(name).DEFAULT.transforms()
        assert tuple(preset.mean) == IMAGENET_MEAN and tuple(preset.std) == IMAGENET_STD
    assert IMAGENET_MEAN == pytest.approx((0.485, 0.456, 0.406))


def test_weights_file_names() -> None:
    assert weights_file("resnet18") == "resnet18-f37072fd.pth"
    for name in BACKBONES:
        assert weights_file(name).startswith(f"{name}-") or name == "efficientnet_b0"
        assert weights_file(name).endswith(".pth")


# --- loading weights ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return torchvision.models.resnet18().state_dict()


def _assert_resnet18_loaded(net: StagedNet, state: dict[str, torch.Tensor]) -> None:
    stem = net.stages[0].state_dict()  # conv1, bn1, relu, maxpool
    assert torch.equal(stem["0.weight"], state["conv1.weight"])
    assert torch.equal(stem["1.running_mean"], state["bn1.running_mean"])
    for i in range(1, 5):
        for key, value in net.stages[i].state_dict().items():
            assert torch.equal(value, state[f"layer{i}.{key}"]), f"layer{i}.{key}"


def _one_line_error(info: pytest.ExceptionInfo[InputError]) -> str:
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


def test_state_dict_file_round_trips(tmp_path: Path, resnet18_state: dict) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18_state, path)
    state = load_weights("resnet18", weights=path)
    assert state is not None
    _assert_resnet18_loaded(build_backbone("resnet18", 2, state=state, seed=0), resnet18_state)
    assert load_weights("resnet18", weights=str(path)) is not None  # str paths too


@pytest.mark.parametrize("wrap", ["module", "state_dict", "model", "checkpoint"])
def test_wrapped_and_ddp_state_dicts_load(tmp_path: Path, resnet18_state: dict, wrap: str) -> None:
    if wrap == "module":
        obj: object = {f"module.{k}": v for k, v in resnet18_state.items()}
    elif wrap == "checkpoint":
        obj = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}
    else:
        obj = {wrap: resnet18_state}
    torch.save(obj, tmp_path / "w.pth")
    state = load_weights("resnet18", weights=tmp_path / "w.pth")
    assert state is not None and set(state) == set(resnet18_state)
    _assert_resnet18_loaded(build_backbone("resnet18", 2, state=state, seed=0), resnet18_state)


def test_head_keys_are_ignored_whatever_their_shape(tmp_path: Path, resnet18_state: dict) -> None:
    state = dict(resnet18_state, **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    del state["bn1.num_batches_tracked"]  # old torchvision checkpoints lack these counters
    torch.save(state, tmp_path / "w.pth")
    loaded = load_weights("resnet18", weights=tmp_path / "w.pth")
    net = build_backbone("resnet18", 7, state=loaded, seed=0)
    assert net.head.out_features == 7
    _assert_resnet18_loaded(net, resnet18_state)


def test_pretrained_weights_come_from_the_hub_cache(
    tmp_path: Path, resnet18_state: dict, no_downloads: Downloads
) -> None:
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(resnet18_state, checkpoints / weights_file("resnet18"))
    state = load_weights("resnet18", pretrained=True)
    assert state is not None and no_downloads.urls == []
    _assert_resnet18_loaded(build_backbone("resnet18", 2, state=state, seed=0), resnet18_state)


def test_download_failure_says_where_to_put_the_file(
    no_downloads: Downloads, tmp_path: Path
) -> None:
    with pytest.raises(InputError) as info:
        load_weights("mobilenet_v3_small")
    message = _one_line_error(info)
    file = weights_file("mobilenet_v3_small")
    expected_path = tmp_path / "torch_home" / "hub" / "checkpoints" / file
    assert str(expected_path) in message
    assert "--weights" in message and "--no-pretrained" in message
    assert no_downloads.urls == [f"https://download.pytorch.org/models/{file}"]
    assert no_downloads.urls[0] in message
    assert not expected_path.exists()


def test_corrupt_cached_file_says_delete_it(tmp_path: Path) -> None:
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / weights_file("resnet18")).write_bytes(b"not a checkpoint")
    with pytest.raises(InputError) as info:
        load_weights("resnet18")
    message = _one_line_error(info)
    assert str(checkpoints / weights_file("resnet18")) in message and "delete" in message


def test_pretrained_false_is_random_init() -> None:
    assert load_weights("resnet18", pretrained=False) is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as info:
        load_weights("resnet18", weights=tmp_path / "nope.pth")
    assert str(tmp_path / "nope.pth") in _one_line_error(info)


@pytest.mark.parametrize("content", ["random", "truncated", "pickled_model", "not_a_dict"])
def test_unreadable_files(tmp_path: Path, resnet18_state: dict, content: str) -> None:
    path = tmp_path / "bad.pth"
    if content == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif content == "truncated":
        torch.save(resnet18_state, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "pickled_model":  # a whole module, which weights_only loading refuses
        torch.save(nn.Linear(2, 2), path)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(InputError) as info:
        load_weights("resnet18", weights=path)
    message = _one_line_error(info)
    assert str(path) in message and "re-save" in message


def test_wrong_architecture_names_the_backbone(tmp_path: Path, resnet18_state: dict) -> None:
    torch.save(resnet18_state, tmp_path / "r18.pth")
    with pytest.raises(InputError) as info:
        load_weights("resnet50", weights=tmp_path / "r18.pth")
    message = _one_line_error(info)
    assert "resnet50" in message and "r18.pth" in message
    assert "missing keys" in message and "layer1.0.conv3.weight" in message
    assert "wrong shapes" in message


def test_missing_backbone_key_is_named(tmp_path: Path, resnet18_state: dict) -> None:
    state = {k: v for k, v in resnet18_state.items() if k != "layer4.1.bn2.weight"}
    with pytest.raises(InputError, match=r"1 missing keys \(layer4\.1\.bn2\.weight\)") as info:
        build_backbone("resnet18", 2, state=state, seed=0)
    _one_line_error(info)


@pytest.mark.parametrize("call", [
    lambda: load_weights("vgg16"),
    lambda: build_backbone("vgg16", 2, state=None, seed=0),
    lambda: weights_file("vgg16"),
])
def test_unknown_backbone_lists_known_ones(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as info:
        call()
    message = _one_line_error(info)
    assert "vgg16" in message and all(name in message for name in BACKBONES)

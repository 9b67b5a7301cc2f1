"""Unit tests of the export package that need no trained run: BN folding, head location, guard maths, config."""
from __future__ import annotations

import types

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from edge.accuracy import average_ranks, pearson, spearman
from edge.formats import model_filename
from edge.preprocess import PreprocessSpec, load_image
from export.config import ExportConfig, ExportError
from export.datasets import CalibrationWarning, load_export_data
from export.graph import conv_bn_pairs, fold_batchnorm, fuse_module, remaining_batchnorms
from export.guard import guard_violations
from export.head_scope import GraphNode, find_head, is_ones_vector_product, is_single_axis_reduction
from train.models.head import DistanceHead, pyramid_cosine_head


class TinyBackbone(nn.Module):
    """Two conv-BN-ReLU stages (strides 2, 4): enough structure for folding and the cosine head."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        for bn in (self.a[1], self.b[1]):  # non-trivial statistics so folding actually changes weights
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.a(x)
        return [a, self.b(a)]


class TinyPyramid(nn.Module):
    """Teacher + student + the lead's distance head: forward(x) -> (map, score), like inference_model()."""

    def __init__(self, blur_sigma: float = 0.0) -> None:
        super().__init__()
        self.teacher, self.student = TinyBackbone(0), TinyBackbone(1)
        self.head = DistanceHead(blur_sigma)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pyramid_cosine_head(self.head, self.teacher(x), self.student(x), x.shape[-2:])


class SharedConvOutput(nn.Module):
    """A conv output used both through its BatchNorm and raw: folding would change the raw use."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.bn.running_mean.fill_(0.7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        m = (self.bn(y) + y).mean(1, keepdim=True)
        return m, m.amax(dim=(1, 2, 3))


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs():
    model = TinyPyramid().eval()
    x = torch.randn(2, 3, 32, 32)
    folded, n, n_affine = fold_batchnorm(model, x)
    assert (n, n_affine) == (4, 0) and remaining_batchnorms(folded) == []
    assert len(remaining_batchnorms(model)) == 4  # the original (shared with training) is untouched
    with torch.no_grad():
        for a, b in zip(model(x), folded(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class DeconvAndLoneBatchNorm(nn.Module):
    """RD-decoder style ConvTranspose→BN, plus a BN on the raw input (no conv to fold it into)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.up, self.bn_up = nn.ConvTranspose2d(3, 4, 2, stride=2, bias=False), nn.BatchNorm2d(4)
        for bn in (self.bn_in, self.bn_up):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.bn_up(self.up(self.bn_in(x))).mean(1, keepdim=True)
        return m, m.amax(dim=(1, 2, 3))


def test_fold_batchnorm_handles_transposed_convs_and_lone_batchnorms():
    model = DeconvAndLoneBatchNorm().eval()
    x = torch.randn(2, 3, 8, 8)
    folded, n, n_affine = fold_batchnorm(model, x)
    assert (n, n_affine) == (1, 1) and remaining_batchnorms(folded) == []
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], folded(x)[0], rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_refuses_a_conv_output_used_without_its_bn():
    model = SharedConvOutput().eval()
    assert conv_bn_pairs(model, torch.randn(1, 3, 8, 8)) == [("conv", "bn")]
    with pytest.raises(ExportError, match="BatchNorm folding changed"):
        fold_batchnorm(model, torch.randn(1, 3, 8, 8))


def test_fuse_module_checks_the_output_contract():
    spec = PreprocessSpec(image_size=32)
    graph = fuse_module(TinyPyramid(), spec, {"method": "test"})
    assert graph.info["batchnorm_folded"] == 4 and graph.info["gmacs"] > 0
    m, s = graph.run(np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32))
    assert m.shape == (3, 1, 32, 32) and s.shape == (3,)
    np.testing.assert_allclose(s, m.reshape(3, -1).max(1), rtol=1e-6)

    class WrongShape(nn.Module):
        def forward(self, x):
            return x[:, :1, ::2, ::2], x.amax(dim=(1, 2, 3))

    with pytest.raises(ExportError, match=r"expected \(1, 1, 32, 32\)"):
        fuse_module(WrongShape(), spec)


def _node(name, op, inputs, outputs, **kw):
    return GraphNode(name, op, tuple(inputs), tuple(outputs), **kw)


def test_find_head_by_structure_not_names():
    # image → conv_t, conv_s (backbone) → t·s, t·t → Σ_c (roots) → sqrt, div → resize → blur conv → max
    nodes = [
        _node("n1", "Conv", ["image"], ["t"], weighted=True),
        _node("n2", "Relu", ["t"], ["t_act"]),
        _node("n3", "Conv", ["image"], ["s"], weighted=True),
        _node("pool", "ReduceMean", ["t_act"], ["gap"]),  # spatial pooling (SE block): not a root
        _node("n4", "Mul", ["t_act", "s"], ["ts"]),
        _node("n5", "Mul", ["t_act", "t_act"], ["tt"]),
        _node("n6", "ReduceSum", ["ts"], ["dot"], channel_reduction=True),
        _node("n7", "ReduceSum", ["tt"], ["nt"], channel_reduction=True),
        _node("n8", "Sqrt", ["nt"], ["snt"]),
        _node("n9", "Div", ["dot", "snt"], ["cos"]),
        _node("n10", "Resize", ["cos"], ["up"]),
        _node("n11", "Conv", ["up"], ["blurred"], weighted=True),
        _node("n12", "ReduceMax", ["blurred"], ["score"]),
        _node("n13", "Conv", ["gap"], ["se"], weighted=True),
    ]
    head = find_head(nodes)
    assert head == {"n4", "n5", "n6", "n7", "n8", "n9", "n10", "n11", "n12"}
    # n2 (Relu) feeds the head AND the SE branch, so it is backbone; the backbone convs are never head.
    assert not head & {"n1", "n2", "n3", "pool", "n13"}
    with pytest.raises(ExportError, match="cannot locate the distance head"):
        find_head([n for n in nodes if not n.channel_reduction])


@pytest.mark.parametrize("constants, expected", [([np.ones((1, 64), np.float32), None], True),
                                                  ([None, np.ones((64, 1, 1), np.float32)], True),
                                                  ([None, None], False),
                                                  ([np.ones((64, 64), np.float32), None], False),  # not a vector
                                                  ([np.array([1.0, 1.0, 0.5]), None], False),
                                                  ([np.ones(1), None], False)])  # a scalar 1 sums nothing
def test_ones_vector_product(constants, expected):
    assert is_ones_vector_product(constants) is expected


@pytest.mark.parametrize("axes, rank, expected", [([1], 4, True), ([-1], 4, True), ([3], 4, True), ([0], 4, False),
                                                  ([2, 3], 4, False), ([1, 2, 3], 4, False), (None, 4, False),
                                                  ([1], 3, True), ([2], 3, False), ([-1], 3, False), ([1], 2, False),
                                                  (np.array([1], np.int64), 4, True),  # a graph constant
                                                  (np.array([[2, 3]], np.int32), 4, False)])
def test_single_axis_reduction(axes, rank, expected):
    assert is_single_axis_reduction(axes, rank) is expected


def test_onnx_export_keeps_the_cosine_epsilon(tmp_path):
    """All-zero features (dead ReLUs) must give distance 1 − 0/ε, not 0/0 = NaN (onnxscript's rewriter drops
    the head's + 1e-8; export_onnx must not)."""
    pytest.importorskip("onnxruntime")
    from edge.engines import load_engine
    from export.onnx_export import export_onnx

    model = TinyPyramid(blur_sigma=1.0).eval()
    with torch.no_grad():  # the teacher's first stage outputs exactly 0 for strongly negative inputs
        model.teacher.a[1].bias.fill_(-100.0)
    graph = fuse_module(model, PreprocessSpec(image_size=32))
    path = export_onnx(graph, tmp_path / "dcam.onnx")
    x = graph.example_input(batch=2, seed=3).numpy()
    m, s = load_engine(path, threads=1).run(x)
    ref_m, ref_s = graph.run(x)
    assert np.isfinite(m).all() and np.isfinite(s).all()
    np.testing.assert_allclose(m, ref_m, atol=1e-4)
    np.testing.assert_allclose(s, ref_s, atol=1e-4)


def test_rank_statistics_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = np.round(a + rng.normal(scale=0.5, size=50), 1)  # ties in b
    np.testing.assert_allclose(average_ranks(b), scipy_stats.rankdata(b))
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert np.isnan(pearson(a, np.ones(50)))


def _accuracy(rho=0.99, drop_img=0.0, drop_pix=0.0, finite=True, diff=1e-6):
    return {"validation_normals": {"finite": finite, "n_images": 12, "score_spearman": rho,
                                   "max_abs_diff_map": diff, "max_abs_diff_score": diff},
            "test": {"drop_points": {"image_auroc": drop_img, "pixel_auroc": drop_pix}}}


@pytest.mark.parametrize("precision, acc, expected", [
    ("int8", _accuracy(), []),
    ("int8", _accuracy(rho=0.94), ["score Spearman"]),
    ("int8", _accuracy(rho=float("nan")), ["score Spearman"]),  # constant int8 scores
    ("int8", _accuracy(rho=None), []),  # too few images to rank
    ("int8", _accuracy(drop_img=1.5), ["image auroc drop"]),
    ("int8", _accuracy(drop_img=1.0, drop_pix=2.0), ["pixel auroc drop"]),
    ("int8", _accuracy(finite=False), ["NaN"]),
    ("fp32", _accuracy(rho=0.5, drop_img=5.0), []),  # fp32 is judged on parity only
    ("fp32", _accuracy(diff=2e-4), ["fp32 parity", "fp32 parity"]),
])
def test_guard_violations(precision, acc, expected):
    got = guard_violations(precision, acc, max_image_auroc_drop=1.0, max_pixel_auroc_drop=1.0, min_score_spearman=0.95)
    assert len(got) == len(expected) and all(e in g for e, g in zip(expected, got))


def test_config_names_and_errors():
    from export.pipeline import not_offered, plan_files
    cfg = ExportConfig(run="r", out="o")
    assert [name for _, _, name in plan_files(cfg)] == ["dcam.onnx", "dcam.int8.onnx", "dcam.xml", "dcam.int8.xml",
                                                        "dcam.tflite", "dcam.int8.tflite"]
    assert model_filename("dcam", "openvino", "int8") == "dcam.int8.xml"
    assert model_filename("dcam", "onnx", "fp16") == "dcam.fp16.onnx"
    # fp16 is asked for explicitly and written where the format offers it (LiteRT: not)
    half = ExportConfig(run="r", out="o", precisions="fp32,fp16")
    assert [name for _, _, name in plan_files(half)] == ["dcam.onnx", "dcam.fp16.onnx", "dcam.xml", "dcam.fp16.xml",
                                                         "dcam.tflite"]
    assert not_offered(half) == ["tflite fp16"]
    with pytest.raises(ExportError, match="--formats: unknown value.*expected one or more of onnx, openvino, tflite"):
        ExportConfig(run="r", out="o", formats="onnx,coreml")
    with pytest.raises(ExportError, match="--precisions"):
        ExportConfig(run="r", out="o", precisions="bf16")
    with pytest.raises(ExportError, match="--target-fpr"):
        ExportConfig(run="r", out="o", target_fpr=0.0)
    with pytest.raises(ExportError, match="--openvino-bias-correction: expected one of full, fast"):
        ExportConfig(run="r", out="o", openvino_bias_correction="none")
    with pytest.raises(ExportError, match="--int8-fp32-layers: expected auto or a count >= 0, got 'some'"):
        ExportConfig(run="r", out="o", int8_fp32_layers="some")
    with pytest.raises(ExportError, match="--int8-sensitivity-target"):
        ExportConfig(run="r", out="o", int8_sensitivity_target=1.5)


def test_each_format_checks_only_its_own_options():
    with pytest.raises(ExportError, match="--tflite-int8: expected one of static, dynamic, got 'none'"):
        ExportConfig(run="r", out="o", formats="tflite", tflite_int8="none")
    cfg = ExportConfig(run="r", out="o", formats="onnx", tflite_int8="none")  # not exported: not read
    assert cfg.format_options("onnx") == {"onnx_int8_scope": "backbone", "onnx_calibration": "minmax",
                                          "int8_weight_bits": 7}
    assert cfg.format_options("openvino") == {"openvino_bias_correction": "full", "openvino_preset": "performance",
                                              "int8_weight_bits": 7}
    assert cfg.format_options("tflite") == {"tflite_int8": "none"}  # LiteRT's kernels do not sum pairs in int16
    with pytest.raises(ExportError, match="--int8-weight-bits: expected one of 7, 8, got 6"):
        ExportConfig(run="r", out="o", formats="onnx", int8_weight_bits=6)


def test_every_format_has_a_writer_module_and_its_options_are_config_fields():
    import dataclasses as dc
    import importlib

    from edge.formats import FORMATS
    fields = {f.name for f in dc.fields(ExportConfig)}
    for fmt in FORMATS.values():
        module = importlib.import_module(fmt.writer)
        assert callable(module.write_fp32) and callable(module.write_int8), fmt.name
        assert {o.field for o in fmt.options} <= fields


def test_writers_share_timing_size_and_one_line_failures(tmp_path):
    from export.writers import WriteJob, try_export

    @try_export("openvino", "fp32")
    def writes(job):
        job.path.write_bytes(b"12345")
        job.path.with_suffix(".bin").write_bytes(b"678")

    written = writes(WriteJob(graph=None, path=tmp_path / "dcam.xml"))
    assert written.size_bytes == 8 and written.seconds >= 0 and written.quantization is None
    assert (written.format, written.precision, written.path) == ("openvino", "fp32", tmp_path / "dcam.xml")

    @try_export("onnx", "int8")
    def fails(job):
        raise RuntimeError("converter exploded\nwith a long C++ trace\nbelow")

    with pytest.raises(ExportError, match=r"^\S*dcam.int8.onnx: onnx int8 export failed \(RuntimeError: converter "
                                          r"exploded\)$"):
        fails(WriteJob(graph=None, path=tmp_path / "dcam.int8.onnx"))

    @try_export("onnx", "fp32")
    def refuses(job):
        raise ExportError("dcam.onnx: BatchNormalization nodes left after folding: ['bn']")

    with pytest.raises(ExportError, match=r"^dcam.onnx: BatchNormalization nodes left"):  # ours: unchanged
        refuses(WriteJob(graph=None, path=tmp_path / "dcam.onnx"))


def test_calib_data_folder_without_the_runs_dataset(tmp_path):
    """--calib-data DIR alone: 20 % of DIR (seeded) becomes the validation set; < 300 images warns."""
    rng = np.random.default_rng(0)
    for i in range(10):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    cfg = types.SimpleNamespace(data=str(tmp_path / "gone"), categories="all", val_fraction=0.2, seed=0)
    with pytest.warns(CalibrationWarning, match="10|8 normal images"):
        data = load_export_data(cfg, ["bottle"], PreprocessSpec(image_size=32), calib_data=str(tmp_path),
                                progress=False)
    assert len(data.calibration) == 8 and len(data.validation) == 2 and data.test is None
    assert not set(data.calibration.paths) & set(data.validation.paths)
    assert data.calibration.rgb.shape == (8, 32, 32, 3) and data.validation.categories == ["bottle", "bottle"]
    x = data.validation.arrays(PreprocessSpec(image_size=32))
    np.testing.assert_array_equal(x[0], load_image(data.validation.paths[0], PreprocessSpec(image_size=32)))
    with pytest.raises(ExportError, match="not reachable.*--calib-data"):
        load_export_data(cfg, ["bottle"], PreprocessSpec(image_size=32), calib_data=None, progress=False)


def test_gmacs_count_transposed_convolutions():
    from torch import nn

    from export.graph import count_gmacs
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 2, 2, stride=2))
    # conv: 8·8 outputs × 4 channels × 3·3·3 weights; transposed: 8·8·4 inputs × 2 channels × 2·2 weights
    expected = 8 * 8 * 4 * 27 + 8 * 8 * 4 * 2 * 4
    assert count_gmacs(module, torch.zeros(1, 3, 8, 8)) * 1e9 == pytest.approx(expected)


def test_a_precision_no_requested_format_offers_is_a_one_line_error(tmp_path):
    from export.pipeline import run_export
    with pytest.raises(ExportError, match=r"--formats tflite --precisions fp16: no file to write \(tflite fp16 not"):
        run_export(ExportConfig(run=str(tmp_path), out=str(tmp_path / "o"), formats="tflite", precisions="fp16"))

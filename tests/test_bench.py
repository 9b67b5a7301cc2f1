"""bench-latency: statistics vs hand-computed values, MAC counting, GEMM graphs, and one end-to-end run
on tiny generated ONNX models (JSON schema, failed row for a corrupt file, accuracy vs sklearn)."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import stats
from bench.gemm import GemmResult, machine_peaks, reference_peak
from edge.accuracy import average_ranks

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 64


# --------------------------------------------------------------------------------------- statistics
def test_percentiles_match_hand_computed_linear_interpolation():
    xs = [50.0, 15.0, 40.0, 20.0, 35.0]  # sorted: 15 20 35 40 50
    assert stats.percentile(xs, 50) == 35.0
    assert stats.percentile(xs, 90) == pytest.approx(46.0)  # h = 4·0.9 = 3.6 → 40 + 0.6·(50 − 40)
    assert stats.percentile(xs, 99) == pytest.approx(49.6)  # h = 3.96 → 40 + 0.96·10
    assert stats.percentile(xs, 25) == 20.0  # h = 1 exactly
    assert stats.percentile(xs, 0) == 15.0 and stats.percentile(xs, 100) == 50.0
    s = stats.summarize(xs)
    assert (s.n, s.median_ms, s.mean_ms, s.min_ms, s.max_ms) == (5, 35.0, 32.0, 15.0, 50.0)
    assert s.fps == pytest.approx(1000 / 35)
    assert stats.percentile([7.0], 99) == 7.0
    with pytest.raises(stats.StatsError):
        stats.summarize([])
    with pytest.raises(stats.StatsError):
        stats.percentile(xs, 101)


def test_ratios_and_throughput_hand_computed():
    assert stats.speedup(87.0, 3.7) == pytest.approx(23.5135, rel=1e-4)
    assert stats.speedup(None, 3.7) is None and stats.speedup(87.0, None) is None
    assert stats.gmac_per_s(3.66, 20.0) == pytest.approx(183.0)  # 3.66 GMAC in 0.02 s
    assert stats.fraction(50.0, 200.0) == 0.25 and stats.fraction(50.0, None) is None
    assert stats.delta(0.95, 0.97) == pytest.approx(-0.02) and stats.delta(float("nan"), 0.9) is None
    assert stats.fps(4.0) == 250.0


def test_spearman_with_ties_hand_computed():
    # ranks a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4]: Σ da·db = 4.5, Σ da² = 4.5, Σ db² = 5 → 4.5/√22.5
    assert average_ranks([1, 2, 2, 3]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert stats.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert stats.spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None  # constant scores: undefined, not 0


def test_reference_peak_is_the_best_gemm_of_that_precision_and_thread_count():
    results = [GemmResult("onnxruntime", "int8", 1, 512, 1.0, 300.0),
               GemmResult("openvino", "int8", 1, 1024, 1.0, 500.0),
               GemmResult("openvino", "int8", 1, 512, 1.0, 450.0), GemmResult("numpy", "fp32", 1, 512, 1.0, 40.0),
               GemmResult("onnxruntime", "fp32", 1, 512, 1.0, 70.0),
               GemmResult("onnxruntime", "fp32", 2, 512, 1.0, 130.0)]
    peaks = machine_peaks(results)
    assert peaks[("int8", 1)].gmac_per_s == 500.0 and peaks[("fp32", 2)].gmac_per_s == 130.0
    assert reference_peak(results, "int8", 1) == (500.0, "openvino/int8 @ 1024³")
    assert reference_peak(results, "fp32", 1) == (70.0, "onnxruntime/fp32 @ 512³")
    assert reference_peak(results, "int8", 2) == (None, None)


# ----------------------------------------------------------------------------------------- MACs/GEMM
def _save(graph_nodes, inputs, outputs, inits, path: Path) -> Path:
    graph = helper.make_graph(graph_nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def toy_model(path: Path, seed: int, precision: str, manifest: bool = True) -> Path:
    """image → Conv3×3(3→8) → ReLU → Conv1×1(8→1) = anomaly_map; score = max. MACs = S²·8·27 + S²·8."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["image", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["anomaly_map"]),
             helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0)]
    _save(nodes, [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
          [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, [1, 1, SIZE, SIZE]),
           helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])], [w1, w2], path)
    if manifest:
        from edge.manifest import write_manifest
        from edge.preprocess import PreprocessSpec
        spec = PreprocessSpec.for_normalization("half", SIZE)
        guard = {"passed": precision == "fp32",  # dcam-export's verdict travels in the manifest
                 "violations": [] if precision == "fp32" else [f"score Spearman 0.{seed}9 < 0.95 vs fp32"]}
        write_manifest(path, {"precision": precision, "input": {**spec.to_dict(), "name": "image"},
                              "threshold": {"global": 1.0}, "accuracy": {"guard": guard},
                              "model": {"method": "dcam", "backbone": "efficientnet_lite0"}})
    return path


def test_macs_counted_from_onnx_graph(tmp_path):
    from bench.macs import count_gmacs, model_gmacs
    toy = toy_model(tmp_path / "toy.onnx", 0, "fp32")
    assert count_gmacs(toy) * 1e9 == pytest.approx(SIZE * SIZE * 8 * 27 + SIZE * SIZE * 8)
    # Depthwise conv (group 8, W 8×1×3×3 on 1×8×10×10, pad 1): 8·10·10 · 1·3·3; MatMul 2×5 @ 5×3: 2·3·5.
    dw = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "dw")
    b = numpy_helper.from_array(np.ones((5, 3), np.float32), "b")
    path = _save([helper.make_node("Conv", ["x", "dw"], ["y"], pads=[1, 1, 1, 1], group=8),
                  helper.make_node("MatMul", ["a", "b"], ["c"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10]),
                  helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                  helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [dw, b], tmp_path / "dw.onnx")
    assert count_gmacs(path) * 1e9 == pytest.approx(8 * 10 * 10 * 9 + 2 * 3 * 5)
    # A corrupt file falls back to its sibling of the same model, and says so.
    (tmp_path / "toy.int8.onnx").write_bytes(b"garbage")
    gmacs, source = model_gmacs(tmp_path / "toy.int8.onnx")
    assert gmacs == pytest.approx(count_gmacs(toy)) and source == "counted from toy.onnx"


def test_roofline_hand_computed(tmp_path):
    from bench.roofline import LayerCost, measure_bandwidth, model_layer_costs, roofline_ms
    dw = numpy_helper.from_array(np.ones((8, 1, 3, 3), np.float32), "dw")
    b = numpy_helper.from_array(np.ones((5, 3), np.float32), "b")
    path = _save([helper.make_node("Conv", ["x", "dw"], ["y"], pads=[1, 1, 1, 1], group=8, name="dw"),
                  helper.make_node("Relu", ["y"], ["r"]),
                  helper.make_node("MatMul", ["a", "b"], ["c"], name="mm")],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 10, 10]),
                  helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 5])],
                 [helper.make_tensor_value_info("r", TensorProto.FLOAT, None),
                  helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [dw, b], tmp_path / "dw.onnx")
    costs = model_layer_costs(path)
    # depthwise: 8·10·10·9 MACs, in + out 800 + 800 elements, 72 weights; MatMul: 2·3·5, 10 + 6, 15 weights
    assert costs == [LayerCost("dw", "Conv", 7200, 1600, 72), LayerCost("mm", "MatMul", 30, 16, 15)]
    # 1 GMAC/s, 1 GB/s: fp32 depthwise max(7.2 µs, 6.688 µs), MatMul max(30 ns, 124 ns)
    assert roofline_ms(costs, "fp32", 1.0, 1.0) == pytest.approx((7.2e-6 + 124e-9) * 1e3)
    assert roofline_ms(costs, "int8", 1.0, 1.0) == pytest.approx((7.2e-6 + 31e-9) * 1e3)
    assert roofline_ms(costs, "fp32", 1.0, 0.1) == pytest.approx((66.88e-6 + 1.24e-6) * 1e3)  # memory-bound
    (tmp_path / "dw.int8.xml").write_text("<net/>")  # another format of the same model reads the ONNX graph
    assert model_layer_costs(tmp_path / "dw.int8.xml") == costs
    assert measure_bandwidth(2, mib=1, runs=3) > 0.1  # GB/s: any machine copies faster than this


def test_int8_gemm_graph_is_an_exact_integer_matmul():
    from bench import gemm
    run = gemm.BUILDERS[("onnxruntime", "int8")](16, 1)
    out = run()[0]
    a, b = gemm._operands(16)
    qa = np.clip(np.round(a * 32 + 128), 0, 255).astype(np.int64)
    qb = np.clip(np.round(b * 32), -127, 127).astype(np.int64)
    assert out.dtype == np.int32 and np.array_equal(out, qa @ qb)
    r = gemm.measure_gemm("numpy", "fp32", threads=1, size=32, runs=2)
    assert r.gmac_per_s == pytest.approx(32 ** 3 / (r.median_ms * 1e-3) / 1e9)


# -------------------------------------------------------------------------------------- end to end
REQUIRED = {"model": str, "engine": str, "precision": str, "threads": int, "size_mb": (float, type(None)),
            "median_ms": float, "p90_ms": float, "p99_ms": float, "fps": float, "peak_rss_mb": float,
            "speedup_vs_eager": (float, type(None)), "image_auroc": (float, type(None)),
            "pixel_auroc": (float, type(None)), "gmacs": (float, type(None)), "gmac_per_s": (float, type(None)),
            "status": str}


def _independent_accuracy(model: Path, root: Path, category: str) -> tuple[float, float, list[float]]:
    """Image/pixel AUROC via onnxruntime + sklearn directly (no bench, no edge.metrics)."""
    import cv2
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    labels, scores, masks, maps = [], [], [], []
    for ddir in sorted((root / category / "test").iterdir()):
        for img in sorted(ddir.glob("*.png")):
            rgb = cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB)
            x = ((cv2.resize(rgb, (SIZE, SIZE)).astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1)[None]
            amap, score = sess.run(None, {"image": np.ascontiguousarray(x)})
            labels.append(int(ddir.name != "good"))
            scores.append(float(score[0]))
            maps.append(amap[0, 0])
            mask_path = root / category / "ground_truth" / ddir.name / f"{img.stem}_mask.png"
            masks.append(cv2.resize(cv2.imread(str(mask_path), 0), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) > 127
                         if ddir.name != "good" else np.zeros((SIZE, SIZE), bool))
    return (roc_auc_score(labels, scores), roc_auc_score(np.stack(masks).ravel(), np.stack(maps).ravel()), scores)


def test_bench_end_to_end_json_failed_row_and_accuracy(tmp_path, synthetic_root, capsys):
    from bench.cli import main
    models = tmp_path / "models"
    models.mkdir()
    fp32 = toy_model(models / "toy.onnx", 0, "fp32")
    int8 = toy_model(models / "toy.int8.onnx", 1, "int8")  # different weights: a measurable accuracy change
    (models / "broken.onnx").write_bytes(b"\x08\x07 this is not a protobuf model")
    category = sorted(p.name for p in synthetic_root.iterdir() if p.is_dir())[0]
    out_json, out_md = tmp_path / "rows.json", tmp_path / "report.md"
    rc = main(["--models", str(models), "--threads", "1", "--runs", "5", "--warmup", "1", "--e2e-runs", "2",
               "--gemm-sizes", "16,32", "--gemm-runs", "2", "--data", str(synthetic_root), "--categories", category,
               "--json", str(out_json), "--markdown", str(out_md), "--plot", str(tmp_path / "tradeoff.png")])
    captured = capsys.readouterr()
    assert (tmp_path / "tradeoff.png").stat().st_size > 5000  # latency vs AUROC, one point per file
    assert rc == 1  # one failed row → non-zero, but the run completed and wrote everything
    rows = json.loads(out_json.read_text())
    assert isinstance(rows, list)
    by_file = {Path(r["model"]).name: r for r in rows if r["engine"] != "torch-eager"}
    assert set(by_file) == {"toy.onnx", "toy.int8.onnx", "broken.onnx"}

    broken = by_file["broken.onnx"]
    assert broken["status"] == "failed" and "broken.onnx" in broken["error"] and broken["median_ms"] is None
    assert "broken.onnx" in captured.err and "| broken.onnx |" in out_md.read_text()

    torch_present = importlib.util.find_spec("torch") is not None
    eager = [r for r in rows if r["engine"] == "torch-eager"]
    assert len(eager) == (1 if torch_present else 0)  # one architecture (from the manifests) × one thread count
    assert all(r["status"] == "ok" and r["speedup_vs_eager"] == 1.0 for r in eager)
    for r in rows:
        if r["status"] != "ok":
            continue
        for key, kind in REQUIRED.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["threads"] == 1 and 0 < r["median_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["fps"] == pytest.approx(1000 / r["median_ms"]) and r["peak_rss_mb"] > 10
        assert r["e2e_median_ms"] > 0
        assert r["frame_1024_ms"] > 0 and r["frame_640x480_ms"] > 0  # decoded camera frames → decision
        assert r["frame_overhead"] == pytest.approx(max(r["frame_1024_ms"], r["frame_640x480_ms"]) / r["median_ms"])
        assert 0 < r["decode_median_ms"] < r["e2e_median_ms"]  # the file decode alone is part of end to end
        if r["other_cpu_cores"] is not None:  # Linux, and long enough a timed block
            assert r["other_cpu_cores"] >= 0 and isinstance(r["contended"], bool)
        if torch_present:
            assert r["speedup_vs_eager"] == pytest.approx(r["eager_median_ms"] / r["median_ms"])
            assert r["eager_model"] == "torch-eager:dcam/efficientnet_lite0@64"
        else:
            assert r["speedup_vs_eager"] is None

    ok = by_file["toy.onnx"]
    assert ok["engine"] == "onnxruntime" and ok["precision"] == "fp32"
    assert ok["size_mb"] == pytest.approx(fp32.stat().st_size / 1e6)
    assert ok["gmacs"] == pytest.approx((SIZE * SIZE * 8 * 27 + SIZE * SIZE * 8) / 1e9)
    assert ok["gmac_per_s"] == pytest.approx(ok["gmacs"] / (ok["median_ms"] / 1000))
    assert re.fullmatch(r"(numpy|onnxruntime|torch)/fp32 @ (16|32)³", ok["peak_source"])
    assert ok["peak_fraction"] == pytest.approx(ok["gmac_per_s"] / ok["peak_gmac_per_s"])
    assert ok["roofline_ms"] > 0 and ok["roofline_fraction"] == pytest.approx(ok["roofline_ms"] / ok["median_ms"])
    assert "| onnxruntime | int8 | 1 |" in out_md.read_text()  # the GEMM table lists the int8 kernel measured

    img_fp32, px_fp32, scores_fp32 = _independent_accuracy(fp32, synthetic_root, category)
    img_int8, px_int8, scores_int8 = _independent_accuracy(int8, synthetic_root, category)
    q = by_file["toy.int8.onnx"]
    assert ok["image_auroc"] == pytest.approx(img_fp32, abs=1e-9)
    assert ok["pixel_auroc"] == pytest.approx(px_fp32, abs=1e-6)
    assert q["precision"] == "int8" and q["image_auroc"] == pytest.approx(img_int8, abs=1e-9)
    assert q["image_auroc_delta"] == pytest.approx(img_int8 - img_fp32, abs=1e-9)
    assert q["pixel_auroc_delta"] == pytest.approx(px_int8 - px_fp32, abs=1e-6)
    from scipy.stats import spearmanr
    assert q["score_spearman_vs_fp32"] == pytest.approx(spearmanr(scores_int8, scores_fp32)[0], abs=1e-6)

    md = out_md.read_text()
    assert "| Model | Engine | Device | Prec." in md and "toy.int8.onnx" in md and "Measured peak" in md
    assert "copy bandwidth, 1 thr:" in md and "% roofline" in md
    assert all(r["device"] == "cpu" for r in rows) and ok["providers"] == ["CPUExecutionProvider"]
    assert ok["export_guard"] == {"passed": True, "violations": []} and broken["export_guard"] is None
    assert q["export_guard"] == {"passed": False, "violations": ["score Spearman 0.19 < 0.95 vs fp32"]}
    assert "dcam-export guard: **failed** (score Spearman 0.19 < 0.95 vs fp32)" in md


@pytest.mark.parametrize("delta, rho, expected", [(-0.010000000000000009, 0.99, "holds"),  # 1 point: within
                                                  (-0.0101, 0.99, "**fails** (image AUROC Δ -0.010)"),
                                                  (0.02, 0.949, "**fails** (score ρ 0.949)"),
                                                  (None, None, None)])
def test_guard_verdict_limits_match_dcam_export(delta, rho, expected):
    from bench.report import guard_verdict
    assert guard_verdict({"image_auroc_delta": delta, "pixel_auroc_delta": None,
                          "score_spearman_vs_fp32": rho}) == expected


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from bench.cli import main
    assert main(["--model", str(tmp_path / "missing.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --model {tmp_path / 'missing.onnx'}: file not found"
    toy = toy_model(tmp_path / "toy.onnx", 0, "fp32", manifest=False)
    assert main(["--model", str(toy), "--threads", "0,x"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["--models", str(tmp_path / "nothing-here")]) == 2
    assert "--models" in capsys.readouterr().err


def test_bench_modules_never_import_torch():
    code = ("import sys, bench.cli, bench.worker, bench.gemm, bench.macs, bench.stats, bench.report; "
            "assert 'torch' not in sys.modules and 'train.models' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)


def test_file_without_its_own_manifest_entry_uses_the_shared_sections(tmp_path):
    from bench.cli import describe_file
    toy = toy_model(tmp_path / "dcam.onnx", 0, "fp32", manifest=False)
    # dcam.json describes only dcam.tflite, but its input/model sections hold for every format of the model.
    (tmp_path / "dcam.json").write_text(json.dumps({
        "schema_version": 1, "input": {"image_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3},
        "model": {"method": "dcam", "backbone": "efficientnet_lite0", "gmacs": 0.5},
        "files": {"dcam.tflite": {"precision": "fp32"}}}))
    f = describe_file(toy, [toy])
    assert f.architecture == ("dcam", "efficientnet_lite0", SIZE) and f.spec["mean"] == [0.5] * 3
    assert "dcam.json" in f.manifest_note and f.precision == "fp32"
    assert f.gmacs == pytest.approx((SIZE * SIZE * 8 * 27 + SIZE * SIZE * 8) / 1e9)  # counted from the file itself


def test_runs_are_split_evenly_over_rounds():
    from bench.runner import split_runs
    assert split_runs(10, 3) == [4, 3, 3] and split_runs(200, 10) == [20] * 10
    assert split_runs(2, 10) == [1, 1] and split_runs(0, 5) == []


def test_a_worker_that_dies_becomes_a_failed_result(tmp_path, monkeypatch):
    from tqdm import tqdm

    from bench.runner import Job, run_group
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the worker process exits at once with code 1
    job = Job("latency", {"target": {"kind": "file", "path": "x.onnx"}, "spec": None, "warmup": 0, "frames": []},
              7, ("file", "x.onnx", 1))
    with tqdm(total=7, disable=True) as bar:
        results = run_group([job], threads=1, runs=5, e2e_runs=2, rounds=2, workdir=tmp_path, bar=bar)
    assert results[("file", "x.onnx", 1)] == {"status": "failed", "error": "worker exited with code 1"}


def test_contention_flag_hand_computed():
    from bench import cpuload
    before = cpuload.Snapshot(wall_s=10.0, system_busy_s=100.0, own_cpu_s=5.0)
    after = cpuload.Snapshot(wall_s=12.0, system_busy_s=104.5, own_cpu_s=7.0)
    # 4.5 s busy in total, 2 s of it ours → others used 2.5 CPU-s in 2 s of wall time = 1.25 cores.
    assert cpuload.other_cpu_seconds(before, after) == (2.5, 2.0)
    assert cpuload.other_cores(2.5, 2.0) == 1.25
    assert cpuload.other_cores(0.1, 0.2) is None  # too short for 100 Hz CPU-time counters
    assert cpuload.contended(1.25, threads=1, cores=2) is False  # 1 free core left for a 1-thread run (+0.25)
    assert cpuload.contended(1.3, threads=1, cores=2) is True
    assert cpuload.contended(0.3, threads=2, cores=2) is True  # a 2-thread run on 2 cores needs both
    assert cpuload.contended(None, threads=2, cores=2) is None
    snap = cpuload.snapshot()
    if snap is not None:  # Linux: busy and own CPU seconds are cumulative counters
        assert snap.system_busy_s >= 0 and snap.own_cpu_s > 0


def test_resize_bench_reports_each_policy_against_the_area_average(tmp_path, capsys) -> None:
    import json

    from bench.resize import main
    assert main(["--sizes", "256x192,96x64", "--image-size", "32", "--runs", "2", "--json",
                 str(tmp_path / "r.json")]) == 0
    all_rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    rows = [r for r in all_rows if r["input"] == "frame"]
    assert [(r["frame"], r["resize"]) for r in rows] == [(f, m) for f in ("256x192", "96x64")
                                                          for m in ("area", "pyramid", "linear")]
    by = {(r["frame"], r["resize"]): r for r in rows}
    # The same frames as JPEG files, read per decode policy: 256x192 → 32 px decodes at 1/4 (64x48 still covers
    # 32x32, 32x24 would not) and 96x64 at 1/2; "full" never reduces. Both stay antialiased: nearer the area
    # average than plain bilinear from the decoded frame.
    files = {(r["frame"], r["decode"]): r for r in all_rows if r["input"] == "jpeg"}
    assert set(files) == {(f, d) for f in ("256x192", "96x64") for d in ("reduced", "full")}
    assert (files[("256x192", "reduced")]["reduction"], files[("96x64", "reduced")]["reduction"]) == (4, 2)
    assert files[("256x192", "full")]["reduction"] == files[("96x64", "full")]["reduction"] == 1
    for (frame, _), r in files.items():
        assert r["median_ms"] > 0 and r["mean_abs_diff_to_area"] < by[(frame, "linear")]["mean_abs_diff_to_area"]
    assert by[("256x192", "area")]["max_abs_diff_to_area"] == 0 and by[("256x192", "area")]["median_ms"] > 0
    # The pyramid antialiases (near the area average); plain bilinear at 8× skips pixels (far from it).
    assert by[("256x192", "pyramid")]["mean_abs_diff_to_area"] < by[("256x192", "linear")]["mean_abs_diff_to_area"]
    out = capsys.readouterr().out
    assert "| 96x64 | frame | pyramid | — |" in out and "| 256x192 | jpeg | area | reduced (1/4) |" in out
    assert main(["--sizes", "640by480"]) == 2


def test_input_fold_twins_give_the_host_paths_map(tiny_export, tmp_path, capsys) -> None:
    """The uint8 NHWC twins (ONNX prefix, OpenVINO PrePostProcessor) of the fp32 files score a frame's fitted view
    as the host path (fit_frame + normalize) does, within float rounding; the int8 twins are only timed."""
    import onnx

    from bench.input_fold import FOLDED_INPUT, fold_onnx, main
    from edge.manifest import load_manifest
    models = tmp_path / "models"
    models.mkdir()
    for name in ("dcam.onnx", "dcam.xml", "dcam.bin", "dcam.json"):
        (models / name).write_bytes((tiny_export / name).read_bytes())
    assert main(["--models", str(models), "--sizes", "96x64", "--runs", "2", "--json", str(tmp_path / "f.json")]) == 0
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert [(r["file"], r["frame"]) for r in rows] == [("dcam.onnx", "96x64"), ("dcam.xml", "96x64")]
    for r in rows:
        assert r["max_abs_diff_map"] < 1e-4 and min(r["engine_ms"], r["host_path_ms"], r["folded_path_ms"]) > 0
    assert "| dcam.xml | 96x64 |" in capsys.readouterr().out
    folded = fold_onnx(onnx.load(str(models / "dcam.onnx")), load_manifest(models / "dcam.onnx").preprocess_spec())
    (graph_input,) = folded.graph.input
    assert graph_input.name == FOLDED_INPUT and graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 64, 64, 3]
    assert main(["--models", str(tmp_path / "missing")]) == 2

"""edge.manifest (round trip, sha256 checks, backups) and edge.thresholds (quantile, tail fit, F1)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge.manifest import (
    SCHEMA_VERSION,
    GraphIO,
    ManifestError,
    load_manifest,
    manifest_path_for,
    read_document,
    sha256_file,
    update_threshold,
    write_manifest,
)
from edge.preprocess import PreprocessSpec
from edge.thresholds import (
    CalibrationConfig,
    CalibrationError,
    calibrate_threshold,
    calibrate_thresholds,
    gpd_tail_fit,
    threshold_section,
)


def _manifest_dict(size: int = 16) -> dict:
    spec = PreprocessSpec.for_normalization("half", size)
    return {"precision": "int8",
            "input": {"name": "image", "shape": [1, 3, size, size], **spec.to_dict()},
            "model": {"method": "dcam", "backbone": "efficientnet_lite0", "categories": ["a", "b"],
                      "blur_sigma": 4.0, "gmacs": None},
            "threshold": {"global": 0.5, "per_category": {"a": 0.4, "b": 0.6}, "mode": "fpr",
                          "target_fpr": 0.001, "fit": "x", "statistics": {}, "source": "export"}}


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "dcam.int8.onnx"
    p.write_bytes(b"not really onnx, but bytes to hash")
    return p


def test_manifest_round_trip_and_naming(model_file: Path) -> None:
    path = write_manifest(model_file, _manifest_dict())
    # <model-file-stem>.json: dcam.int8.onnx → dcam.int8.json, dcam.xml → dcam.json.
    assert path == model_file.parent / "dcam.int8.json" == manifest_path_for(model_file)
    assert manifest_path_for("x/dcam.xml") == Path("x/dcam.json")
    m = load_manifest(model_file)
    assert m.data["model_sha256"] == sha256_file(model_file)
    import hashlib
    assert m.data["model_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert m.data["schema_version"] == SCHEMA_VERSION == 2 and m.format == "onnx" and m.precision == "int8"
    assert m.inference_precision_hint == "f32"
    assert m.preprocess_spec() == PreprocessSpec.for_normalization("half", 16)
    assert m.threshold() == 0.5 and m.threshold("b") == 0.6
    with pytest.raises(ManifestError, match="'c'.*available"):
        m.threshold("c")
    assert m.output_name("anomaly_map") == "anomaly_map"


def test_manifest_errors_name_the_file(model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="dcam.int8.json: manifest not found"):
        load_manifest(model_file)
    write_manifest(model_file, _manifest_dict())
    model_file.write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="model_sha256 mismatch"):
        load_manifest(model_file)
    assert load_manifest(model_file, verify_sha256=False).threshold() == 0.5
    manifest_path_for(model_file).write_text("{ not json")
    with pytest.raises(ManifestError, match="dcam.int8.json: corrupt manifest"):
        load_manifest(model_file)
    manifest_path_for(model_file).write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))  # a newer writer
    with pytest.raises(ManifestError, match="schema_version"):
        load_manifest(model_file)
    with pytest.raises(ManifestError, match="unknown model extension"):
        (tmp_path / "m.pt").write_bytes(b"x")
        write_manifest(tmp_path / "m.pt", _manifest_dict())


def test_formats_sharing_a_stem_keep_separate_entries_in_one_manifest(tmp_path: Path) -> None:
    for name in ("dcam.onnx", "dcam.tflite"):
        (tmp_path / name).write_bytes(name.encode())
        d = _manifest_dict()
        d["threshold"]["global"] = 1.0 if name.endswith("onnx") else 2.0
        write_manifest(tmp_path / name, d)
    assert load_manifest(tmp_path / "dcam.onnx").threshold() == 1.0
    assert load_manifest(tmp_path / "dcam.tflite").threshold() == 2.0
    document = json.loads((tmp_path / "dcam.json").read_text())
    assert sorted(document["files"]) == ["dcam.onnx", "dcam.tflite"] and "input" in document
    update_threshold(tmp_path / "dcam.tflite", {"global": 3.0}, backup=False)
    assert load_manifest(tmp_path / "dcam.onnx").threshold() == 1.0
    assert load_manifest(tmp_path / "dcam.tflite").threshold() == 3.0
    # A re-export with a different model drops the stale entries of the other files.
    (tmp_path / "dcam.onnx").write_bytes(b"new export")
    d = _manifest_dict()
    d["input"]["image_size"] = 32
    write_manifest(tmp_path / "dcam.onnx", d)
    with pytest.raises(ManifestError, match="no entry for 'dcam.tflite'"):
        load_manifest(tmp_path / "dcam.tflite")


def test_file_that_failed_the_accuracy_guard_is_refused_unless_accepted(model_file: Path) -> None:
    d = _manifest_dict()
    d["accuracy"] = {"guard": {"passed": False, "violations": ["score Spearman 0.80 < 0.95"], "allowed_by_flag": False}}
    write_manifest(model_file, d)
    with pytest.raises(ManifestError, match="failed the export accuracy guard.*Spearman 0.80.*--allow-accuracy-drop"):
        load_manifest(model_file).check_accuracy_guard()
    d["accuracy"]["guard"]["allowed_by_flag"] = True
    write_manifest(model_file, d)
    load_manifest(model_file).check_accuracy_guard()
    assert oct(manifest_path_for(model_file).stat().st_mode & 0o777) == oct(0o644)


def test_openvino_weights_are_hashed_too(tmp_path: Path) -> None:
    xml, bin_ = tmp_path / "dcam.xml", tmp_path / "dcam.bin"
    xml.write_text("<net/>")
    bin_.write_bytes(b"weights")
    write_manifest(xml, _manifest_dict())
    assert load_manifest(xml).format == "openvino"
    bin_.write_bytes(b"other weights")
    with pytest.raises(ManifestError, match="weights_sha256 mismatch"):
        load_manifest(xml)


def test_update_threshold_keeps_backup_and_other_categories(model_file: Path) -> None:
    write_manifest(model_file, _manifest_dict())
    before = manifest_path_for(model_file).read_text()
    res = calibrate_threshold(np.linspace(0, 1, 101), target_fpr=0.1)
    update_threshold(model_file, threshold_section({"per_category": {"a": res}}, source="edge-calibrate"))
    backups = list(model_file.parent.glob("dcam.int8.json.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == before
    m = load_manifest(model_file)
    assert m.threshold("a") == pytest.approx(0.9) and m.threshold("b") == 0.6 and m.threshold() == 0.5
    assert m.data["threshold"]["statistics"]["per_category"]["a"]["source"] == "edge-calibrate"
    update_threshold(model_file, threshold_section({"global": res}, source="edge-calibrate"), backup=False)
    m = load_manifest(model_file)
    assert m.threshold() == pytest.approx(0.9) and m.data["threshold"]["fit"] == "empirical-quantile"
    assert len(list(model_file.parent.glob("dcam.int8.json.bak-*"))) == 1


# ---- schema versions -----------------------------------------------------------------------------
V1_EXAMPLE = Path(__file__).parent / "data" / "manifest-v1"  # written by the schema-1 writer (its README.md)


@pytest.fixture
def v1_export(tmp_path: Path) -> Path:
    for f in V1_EXAMPLE.iterdir():
        if f.suffix != ".py" and f.suffix != ".md":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_v1_manifest_is_read_as_v2(v1_export: Path) -> None:
    raw = json.loads((v1_export / "dcam.json").read_text())
    assert raw["schema_version"] == 1 and raw["files"]["dcam.tflite"]["runtime"]["engine"] == "ai-edge-litert"
    doc = read_document(v1_export / "dcam.json")
    assert doc.schema_version == 2 and sorted(doc.files) == ["dcam.onnx", "dcam.tflite", "dcam.xml"]
    assert not doc.unreadable and doc.model["method"] == "dcam"
    for name, fmt, engine in (("dcam.onnx", "onnx", "onnxruntime"), ("dcam.xml", "openvino", "openvino"),
                              ("dcam.tflite", "tflite", "litert")):
        m = load_manifest(v1_export / name)  # sha256 of the committed files still verify
        assert m.format == fmt and m.precision == "fp32" and m.entry.runtime["engine"] == engine
        assert m.threshold() == raw["files"][name]["threshold"]["global"] and m.categories == ["a", "b"]
        assert m.preprocess_spec().image_size == 32 and m.data["threshold"] == raw["files"][name]["threshold"]
    assert load_manifest(v1_export / "dcam.xml").entry.weights_file == "dcam.bin"
    # graph_io was written by the v1 exporter and is what the runtime now reads (TFLite's converter names).
    assert load_manifest(v1_export / "dcam.tflite").graph_io == GraphIO(
        "serving_default_anomaly_map_output", "serving_default_score_output", "serving_default_image")


def test_v1_manifest_is_rewritten_as_v2_keeping_every_entry(v1_export: Path) -> None:
    before = json.loads((v1_export / "dcam.json").read_text())
    update_threshold(v1_export / "dcam.onnx", {"global": 9.0}, backup=False)
    after = json.loads((v1_export / "dcam.json").read_text())
    assert after["schema_version"] == 2 and sorted(after["files"]) == sorted(before["files"])
    assert after["files"]["dcam.tflite"]["runtime"]["engine"] == "litert"
    for name in ("dcam.xml", "dcam.tflite"):  # the other entries: same content apart from the engine's name
        old, new = before["files"][name], after["files"][name]
        assert {**old, "runtime": new["runtime"]} == new
    assert load_manifest(v1_export / "dcam.onnx").threshold() == 9.0
    assert load_manifest(v1_export / "dcam.tflite").threshold() == before["files"]["dcam.tflite"]["threshold"]["global"]


def test_v1_files_run_with_the_output_names_of_their_manifest(v1_export: Path) -> None:
    from edge.engines import load_engine
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    scores = {}
    for name in ("dcam.onnx", "dcam.xml", "dcam.tflite"):
        pytest.importorskip({"dcam.onnx": "onnxruntime", "dcam.xml": "openvino", "dcam.tflite": "ai_edge_litert"}[name])
        m = load_manifest(v1_export / name)
        engine = load_engine(v1_export / name, threads=1, manifest=m)
        assert engine.graph_io == m.graph_io  # selected by the manifest's names, not guessed
        amap, scores[name] = engine.run(x)
        np.testing.assert_allclose(scores[name], amap.reshape(2, -1).max(1), rtol=1e-5)
    for name in scores:
        np.testing.assert_allclose(scores[name], scores["dcam.onnx"], rtol=1e-4)


def test_hand_written_v1_manifest_without_graph_io(v1_export: Path) -> None:
    """A v1 manifest that never had graph_io (hand-written): loaded, and the runtime matches outputs by name/rank."""
    doc = json.loads((v1_export / "dcam.json").read_text())
    for entry in doc["files"].values():
        del entry["graph_io"]
    (v1_export / "dcam.json").write_text(json.dumps(doc))
    m = load_manifest(v1_export / "dcam.tflite")
    assert m.graph_io is None and m.output_name("score") == "score"
    pytest.importorskip("ai_edge_litert")
    from edge.engines import load_engine
    engine = load_engine(v1_export / "dcam.tflite", threads=1)
    assert engine.graph_io.anomaly_map == "serving_default_anomaly_map_output"


def test_graph_io_that_does_not_name_the_files_outputs_is_refused(v1_export: Path) -> None:
    from edge.engines import EngineError, load_engine
    doc = json.loads((v1_export / "dcam.json").read_text())
    doc["files"]["dcam.onnx"]["graph_io"]["score"] = "not_there"
    (v1_export / "dcam.json").write_text(json.dumps(doc))
    with pytest.raises(EngineError, match=r"dcam.onnx: the manifest names output 'not_there' \(graph_io.score\)"):
        load_engine(v1_export / "dcam.onnx")


def test_a_broken_entry_blocks_only_its_own_file(v1_export: Path) -> None:
    doc = json.loads((v1_export / "dcam.json").read_text())
    doc["files"]["dcam.xml"]["threshold"]["global"] = "high"
    (v1_export / "dcam.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="dcam.json: threshold.global must be a number"):
        load_manifest(v1_export / "dcam.xml")
    update_threshold(v1_export / "dcam.onnx", {"global": 2.0}, backup=False)  # the broken entry is kept verbatim
    assert json.loads((v1_export / "dcam.json").read_text())["files"]["dcam.xml"] == doc["files"]["dcam.xml"]
    assert load_manifest(v1_export / "dcam.onnx").threshold() == 2.0


# ---- calibration ---------------------------------------------------------------------------------
def test_empirical_quantile_with_many_scores() -> None:
    x = np.random.default_rng(0).normal(size=20_000)
    r = calibrate_threshold(x, target_fpr=0.001)
    assert r.fit == "empirical-quantile"
    # Independent check: fraction of normal scores above the threshold is the target rate.
    assert (x > r.threshold).sum() == 20  # n * target_fpr exactly, no ties in continuous data
    assert r.statistics["empirical_fpr"] == pytest.approx(0.001)


def test_tail_fit_above_max_when_target_below_one_over_n() -> None:
    rng = np.random.default_rng(1)
    for n in (30, 100, 300):
        x = rng.exponential(size=n)
        r = calibrate_threshold(x, target_fpr=0.001)
        assert r.fit.startswith("pot-"), r.fit
        assert r.threshold > x.max()
        assert r.statistics["n_excess"] >= 10 and "u" in r.statistics and "sigma" in r.statistics


@pytest.mark.parametrize("dist,true_q,tol", [
    ("exponential", math.log(1000.0), 0.10),   # Exp(1): P(X > ln 1000) = 0.001
    ("normal", 3.090232306167813, 0.20),       # N(0,1) 0.999 quantile; exponential tail is conservative
])
def test_tail_fit_recovers_known_quantile(dist: str, true_q: float, tol: float) -> None:
    rng = np.random.default_rng(2)
    est = [calibrate_threshold(getattr(rng, dist)(size=300), target_fpr=0.001).threshold for _ in range(40)]
    # Median over repetitions: the estimator is centred near the true quantile (single draws are noisy).
    assert abs(np.median(est) / true_q - 1) < tol


def test_gpd_fit_recovers_shape() -> None:
    rng = np.random.default_rng(3)
    for xi in (0.3, -0.2):
        u = rng.random(4000)
        y = (u ** (-xi) - 1) / xi  # inverse CDF of GPD(ξ, σ=1)
        xi_hat, sigma_hat, _ = gpd_tail_fit(y)
        assert abs(xi_hat - xi) < 0.07 and abs(sigma_hat - 1) < 0.1


def test_heavy_tail_uses_gpd() -> None:
    rng = np.random.default_rng(4)
    x = rng.pareto(3.0, size=3000)  # ξ = 1/3
    r = calibrate_threshold(x, target_fpr=0.0001, config=CalibrationConfig(gpd_min_excesses=50))
    assert r.fit == "pot-gpd" and r.statistics["xi"] > 0.15
    true_q = 0.0001 ** (-1 / 3.0) - 1  # Lomax(3) quantile
    assert abs(r.threshold / true_q - 1) < 0.35


def test_f1_threshold_matches_brute_force() -> None:
    rng = np.random.default_rng(5)
    normal, anomalous = rng.normal(size=80), rng.normal(2.0, 1.0, size=30)
    r = calibrate_threshold(normal, anomalous, mode="f1")
    scores = np.r_[normal, anomalous]
    labels = np.r_[np.zeros(80), np.ones(30)]

    def f1(t: float) -> float:
        pred = scores > t
        tp = (pred & (labels == 1)).sum()
        return 2 * tp / (pred.sum() + 30)

    best = max(f1(t) for t in np.r_[scores, scores.min() - 1])
    assert f1(r.threshold) == pytest.approx(best) == pytest.approx(r.statistics["f1"])
    assert r.statistics["recall"] == pytest.approx((anomalous > r.threshold).mean())


def test_calibrate_thresholds_global_and_per_category() -> None:
    rng = np.random.default_rng(6)
    cats = ["a"] * 200 + ["b"] * 200
    scores = np.r_[rng.normal(0, 1, 200), rng.normal(10, 1, 200)]
    labels = np.zeros(400, int)
    res = calibrate_thresholds(scores, labels, cats, mode="fpr", target_fpr=0.01)
    assert set(res["per_category"]) == {"a", "b"}
    assert res["per_category"]["a"].threshold < 5 < res["per_category"]["b"].threshold
    assert res["global"].threshold > res["per_category"]["a"].threshold
    # f1 mode without anomalies in a category falls back to fpr for it.
    labels[:10] = 1
    res = calibrate_thresholds(scores, labels, cats, mode="f1")
    assert res["per_category"]["a"].mode == "f1" and res["per_category"]["b"].mode == "fpr"
    section = threshold_section(res, source="export")
    assert section["global"] == res["global"].threshold and section["statistics"]["per_category"]["b"]["mode"] == "fpr"
    json.dumps(section)  # must be JSON-serialisable for the manifest


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(CalibrationError, match="non-finite"):
        calibrate_threshold([0.1, float("nan")])
    with pytest.raises(CalibrationError, match="none given"):
        calibrate_threshold([])
    with pytest.raises(CalibrationError, match="f1 needs anomalous"):
        calibrate_threshold([0.1, 0.2], mode="f1")
    with pytest.raises(CalibrationError, match="target_fpr"):
        calibrate_threshold([0.1, 0.2], target_fpr=0.0)

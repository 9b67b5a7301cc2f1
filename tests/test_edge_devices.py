"""--device (issue #16): the one device table, provider / device selection with fakes (no GPU here), auto
ordering, one-line errors, the TensorRT cache directory, and where the chosen device is reported."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_edge_runtime import S, _images, make_tiny_onnx, reference, write_tiny_manifest

from edge import devices
from edge.config import ConfigError, RunConfig, SourceConfig, parse_config
from edge.devices import DeviceError, candidates, default_trt_cache_dir, guard_covers
from edge.engines import DeviceUnavailable, EngineError, load_engine
from edge.manifest import load_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
ORT = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"


@pytest.fixture
def onnx_model(tmp_path: Path) -> Path:
    path = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(path)
    return path


def _covering(model: Path, covers: list[str], precision: str = "fp32") -> None:
    """Rewrite the model's manifest so that its accuracy guard covers ``covers`` (what a future export may write)."""
    data = load_manifest(model, verify_sha256=False).data
    data["precision"] = precision
    data["accuracy"] = {"guard": {"passed": True, "violations": [], "covers": covers}}
    write_manifest(model, {k: v for k, v in data.items() if k not in ("model_file", "model_sha256", "format")})


@pytest.fixture
def fake_ort(monkeypatch):
    """onnxruntime with the given providers 'available'; sessions record their arguments and run on the CPU.

    ``state["start"]``: providers a session really starts (default: all it was given), e.g. to fake a CUDA
    provider that is listed but whose libraries are missing.
    """
    import onnxruntime as ort
    state: dict = {"available": [ORT], "calls": [], "start": None, "probes": 0}

    def available():
        state["probes"] += 1
        return list(state["available"])

    class FakeSession(ort.InferenceSession):
        def __init__(self, path, sess_options=None, providers=None, **kw):
            state["calls"].append({"providers": providers, "sess_options": sess_options, **kw})
            super().__init__(path, sess_options=sess_options, providers=[ORT])
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            self._fake = [n for n in names if state["start"] is None or n in state["start"]]

        def get_providers(self):
            return list(self._fake)

    monkeypatch.setattr(ort, "get_available_providers", available)
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    # The engine sets NVIDIA_TF32_OVERRIDE for GPU providers; restore the environment afterwards.
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "placeholder")
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    return state


# ---- the table --------------------------------------------------------------------------------------
def test_one_table_drives_extensions_formats_and_bench() -> None:
    from bench.gemm import ENGINE_GEMM
    from edge.engines import ENGINE_CLASSES
    from edge.formats import FORMATS, format_for_path
    engine_by_suffix = {f.suffix: f.engine for f in FORMATS.values()}
    assert engine_by_suffix == {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}
    by_suffix = {s: format_for_path(f"m{s.upper()}").name for s in engine_by_suffix}
    assert by_suffix == {s: e.format for e in devices.ENGINES for s in e.suffixes} == \
        {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}
    assert {name: f.engine for name, f in FORMATS.items()} == {"onnx": "onnxruntime", "openvino": "openvino",
                                                               "tflite": "litert"}
    # One device entry and one engine class per format, in the registry's order; bench's GEMM map follows it.
    assert list(devices.ENGINE_BY_FORMAT) == list(FORMATS) and set(ENGINE_CLASSES) == set(engine_by_suffix.values())
    assert {engine for engine, _ in ENGINE_GEMM} == {"onnxruntime", "openvino", "torch-eager"}
    supported = {t.device for e in devices.ENGINES for t in e.devices}
    assert supported == set(devices.DEVICES) == set(devices.AUTO_ORDER)
    assert all(e.devices[0].device == "cpu" for e in devices.ENGINES)  # cpu first: the default target
    onnx, ov, lite = (devices.ENGINE_BY_FORMAT[f] for f in ("onnx", "openvino", "tflite"))
    assert onnx.device_names == ("cpu", "cuda", "tensorrt") and ov.device_names == ("cpu", "gpu", "npu")
    assert lite.device_names == ("cpu",)
    assert onnx.target("tensorrt").target == TRT and onnx.target("tensorrt").fallback == (CUDA, ORT)
    assert ov.target("gpu").target == "GPU" and ov.target("npu").target == "NPU"


def test_guard_covers_reads_only_known_reduced_precisions() -> None:
    assert guard_covers(None) == frozenset() and guard_covers({"accuracy": {"guard": {"passed": True}}}) == frozenset()
    assert guard_covers({"accuracy": {"guard": {"covers": ["fp16", "int4", 3]}}}) == {"fp16"}
    assert guard_covers({"accuracy": {"guard": {"covers": "fp16"}}}) == frozenset()  # not a list: ignored


# ---- ONNX Runtime -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", [None, "cpu"])
def test_cpu_gives_exactly_todays_session_options(onnx_model: Path, fake_ort: dict, device: str | None) -> None:
    import onnxruntime as ort
    kw = {} if device is None else {"device": device}
    eng = load_engine(onnx_model, threads=2, **kw)
    (call,) = fake_ort["calls"]
    assert call["providers"] == ["CPUExecutionProvider"] and set(call) == {"providers", "sess_options"}
    so = call["sess_options"]
    assert (so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level) == (2, 1, 3)
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert fake_ort["probes"] == 0  # cpu never asks for the available providers
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ
    assert eng.device == "cpu" and eng.providers == [ORT]
    d = eng.describe()
    assert d["device"] == "cpu" and d["providers"] == [ORT] and d["guard_covered"] is True
    assert "trt_cache_dir" not in d and "tf32" not in d


def test_cuda_gets_cuda_then_cpu_fallback_and_fp32(onnx_model: Path, fake_ort: dict) -> None:
    fake_ort["available"] = [TRT, CUDA, ORT]
    eng = load_engine(onnx_model, threads=1, device="cuda")
    assert fake_ort["calls"][0]["providers"] == [CUDA, ORT]  # unsupported nodes fall back to the CPU EP
    assert eng.device == "cuda" and eng.providers == [CUDA, ORT]
    # The guard measured fp32: TF32 tensor-core rounding is switched off unless the manifest covers it.
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0" and eng.info["tf32"] is False
    assert eng.info["reduced_precision"] == [] and eng.info["guard_covered"] is True
    x = np.random.default_rng(0).normal(size=(1, 3, S, S)).astype(np.float32)
    np.testing.assert_allclose(eng.run(x)[1], reference(x)[1], rtol=1e-5)


def test_tf32_only_where_the_guard_covers_it_and_an_operator_setting_is_kept(onnx_model: Path, fake_ort: dict,
                                                                            monkeypatch) -> None:
    fake_ort["available"] = [CUDA, ORT]
    _covering(onnx_model, ["tf32"])
    eng = load_engine(onnx_model, device="cuda")
    assert "NVIDIA_TF32_OVERRIDE" not in os.environ and eng.info["tf32"] is True
    assert eng.info["reduced_precision"] == ["tf32"]
    write_tiny_manifest(onnx_model)
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")
    assert load_engine(onnx_model, device="cuda").info["tf32"] is True and os.environ["NVIDIA_TF32_OVERRIDE"] == "1"


def test_tensorrt_options_cache_per_model_and_no_fp16(onnx_model: Path, fake_ort: dict, tmp_path: Path) -> None:
    fake_ort["available"] = [TRT, CUDA, ORT]
    cache = tmp_path / "trt-cache"
    eng = load_engine(onnx_model, device="tensorrt", trt_cache_dir=cache)
    sha = load_manifest(onnx_model).data["model_sha256"]
    model_cache = cache / sha[:16]
    assert model_cache.is_dir()
    assert fake_ort["calls"][0]["providers"] == [
        (TRT, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(model_cache),
               "trt_fp16_enable": False, "trt_int8_enable": False}), CUDA, ORT]
    assert eng.device == "tensorrt" and eng.providers == [TRT, CUDA, ORT]
    assert eng.describe()["trt_cache_dir"] == str(model_cache) and eng.info["tf32"] is False
    # Without CUDA EP available, TensorRT falls back straight to the CPU EP.
    fake_ort["available"] = [TRT, ORT]
    load_engine(onnx_model, device="tensorrt", trt_cache_dir=cache)
    assert [p if isinstance(p, str) else p[0] for p in fake_ort["calls"][-1]["providers"]] == [TRT, ORT]


def test_tensorrt_fp16_only_when_the_guard_covers_it_and_int8_for_int8_files(onnx_model: Path, fake_ort: dict,
                                                                            tmp_path: Path) -> None:
    fake_ort["available"] = [TRT, CUDA, ORT]
    _covering(onnx_model, ["fp16"])
    eng = load_engine(onnx_model, device="tensorrt", trt_cache_dir=tmp_path)
    options = fake_ort["calls"][-1]["providers"][0][1]
    assert options["trt_fp16_enable"] is True and options["trt_int8_enable"] is False
    assert eng.info["reduced_precision"] == ["fp16"] and eng.info["guard_covered"] is True
    _covering(onnx_model, [], precision="int8")  # QDQ int8 graphs need TensorRT's int8 mode
    load_engine(onnx_model, device="tensorrt", trt_cache_dir=tmp_path)
    options = fake_ort["calls"][-1]["providers"][0][1]
    assert options["trt_fp16_enable"] is False and options["trt_int8_enable"] is True


def test_trt_cache_dir_defaults_and_unwritable(onnx_model: Path, fake_ort: dict, tmp_path: Path,
                                               monkeypatch) -> None:
    assert default_trt_cache_dir({"STATE_DIRECTORY": "/var/lib/dcam-edge"}) == Path("/var/lib/dcam-edge/trt-cache")
    assert default_trt_cache_dir({"STATE_DIRECTORY": "/a:/b", "XDG_CACHE_HOME": "/c"}) == Path("/a/trt-cache")
    assert default_trt_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/dcam-edge/trt-cache")
    assert default_trt_cache_dir({}) == Path.home() / ".cache" / "dcam-edge" / "trt-cache"
    fake_ort["available"] = [TRT, CUDA, ORT]
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    eng = load_engine(onnx_model, device="tensorrt")
    assert Path(eng.info["trt_cache_dir"]).parent == tmp_path / "state" / "trt-cache"
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EngineError) as err:
        load_engine(onnx_model, device="tensorrt", trt_cache_dir=blocker)
    assert str(err.value).startswith(f"--trt-cache-dir {blocker}: cannot create") and "\n" not in str(err.value)


@pytest.mark.parametrize("device, provider", [("cuda", CUDA), ("tensorrt", TRT)])
def test_missing_provider_is_one_line_naming_what_to_install(onnx_model: Path, fake_ort: dict, device: str,
                                                             provider: str) -> None:
    with pytest.raises(DeviceError) as err:
        load_engine(onnx_model, device=device)
    msg = str(err.value)
    assert msg.startswith(f"--device {device}: ONNX Runtime has no {provider} here (available: CPUExecutionProvider); "
                          f"install onnxruntime-gpu (x86, in place of onnxruntime) or NVIDIA's Jetson onnxruntime-gpu "
                          f"wheel (see NVIDIA's Jetson Zoo page for the wheel matching your JetPack)")
    assert "\n" not in msg and not fake_ort["calls"]


def test_a_listed_provider_that_does_not_start_is_an_error_or_auto_moves_on(onnx_model: Path, fake_ort: dict,
                                                                           tmp_path: Path, caplog) -> None:
    # onnxruntime-gpu lists TensorRT even without TensorRT's libraries; the session then runs without it.
    fake_ort.update(available=[TRT, CUDA, ORT], start=[CUDA, ORT])
    with pytest.raises(DeviceUnavailable) as err:
        load_engine(onnx_model, device="tensorrt", trt_cache_dir=tmp_path)
    assert str(err.value).startswith("--device tensorrt: ONNX Runtime could not start TensorrtExecutionProvider "
                                     "(the session got CUDAExecutionProvider, CPUExecutionProvider)")
    with caplog.at_level(logging.INFO, logger="edge.engines"):
        eng = load_engine(onnx_model, device="auto", trt_cache_dir=tmp_path)
    assert eng.device == "cuda" and "trying cuda" in caplog.text
    fake_ort["start"] = [ORT]
    assert load_engine(onnx_model, device="auto", trt_cache_dir=tmp_path).device == "cpu"


@pytest.mark.parametrize("available, expected", [([TRT, CUDA, ORT], "tensorrt"), ([CUDA, ORT], "cuda"),
                                                 (["AzureExecutionProvider", ORT], "cpu")])
def test_auto_picks_the_fastest_available_onnx_device(onnx_model: Path, fake_ort: dict, tmp_path: Path,
                                                      available: list[str], expected: str) -> None:
    fake_ort["available"] = available
    assert load_engine(onnx_model, device="auto", trt_cache_dir=tmp_path).device == expected


def test_auto_order_and_guard_coverage_per_engine(monkeypatch) -> None:
    onnx, ov, lite = (devices.ENGINE_BY_FORMAT[f] for f in ("onnx", "openvino", "tflite"))
    names = lambda ts: [t.device for t in ts]  # noqa: E731
    monkeypatch.setattr(devices, "_ort_available", lambda: [TRT, CUDA, ORT])
    onnx = devices.EngineSupport(**{**onnx.__dict__, "available": lambda: [TRT, CUDA, ORT]})
    assert names(candidates(onnx, "auto")) == ["tensorrt", "cuda", "cpu"]
    ov_all = devices.EngineSupport(**{**ov.__dict__, "available": lambda: ["CPU", "GPU.0", "NPU"]})
    # The NPU computes in fp16: only where the guard covers fp16 (then before the GPU).
    assert names(candidates(ov_all, "auto")) == ["gpu", "cpu"]
    assert names(candidates(ov_all, "auto", frozenset({"fp16"}))) == ["npu", "gpu", "cpu"]
    assert names(candidates(ov_all, "npu")) == ["npu"]  # explicit: allowed, with a warning at load
    broken = devices.EngineSupport(**{**ov.__dict__, "available": lambda: 1 / 0})
    assert names(candidates(broken, "auto")) == ["cpu"]
    assert names(candidates(lite, "auto")) == ["cpu"]


def test_unsupported_and_unknown_devices_are_one_line(tmp_path: Path, onnx_model: Path) -> None:
    lite = tmp_path / "m.tflite"
    lite.write_bytes(b"TFL3 not really a model")
    xml = tmp_path / "m.xml"
    xml.write_text("<net/>")
    cases = [(lite, "gpu", "--device gpu: .tflite files run on the CPU only (LiteRT); use --device cpu"),
             (xml, "cuda", "--device cuda: OpenVINO (.xml) runs on cpu, gpu, npu, not cuda; cuda needs a .onnx file"),
             (onnx_model, "npu", "--device npu: ONNX Runtime (.onnx) runs on cpu, cuda, tensorrt, not npu; npu needs "
                                 "a .xml file"),
             (onnx_model, "xpu", "--device 'xpu': expected one of cpu, cuda, tensorrt, gpu, npu, auto")]
    for path, device, expected in cases:
        with pytest.raises(DeviceError) as err:
            load_engine(path, device=device)
        assert str(err.value) == expected


# ---- OpenVINO ---------------------------------------------------------------------------------------
@pytest.fixture
def fake_ov(monkeypatch, tmp_path: Path):
    """openvino.Core with the given devices; compile_model records (device, config) and compiles for the CPU."""
    ov = pytest.importorskip("openvino")
    state: dict = {"devices": ["CPU"], "calls": [], "probes": 0}

    class FakeCore(ov.Core):
        @property
        def available_devices(self):
            state["probes"] += 1
            return list(state["devices"])

        def compile_model(self, model, device, config=None):
            state["calls"].append((device, dict(config or {})))
            return super().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    src = make_tiny_onnx(tmp_path / "src.onnx")
    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.convert_model(str(src)), str(xml), compress_to_fp16=False)
    write_tiny_manifest(xml)
    monkeypatch.setattr(ov, "Core", FakeCore)
    state["xml"] = xml
    return state


def test_openvino_cpu_keeps_the_manifest_hint_and_threads(fake_ov: dict) -> None:
    eng = load_engine(fake_ov["xml"], threads=2)
    assert fake_ov["calls"] == [("CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                                         "INFERENCE_NUM_THREADS": 2})]
    assert fake_ov["probes"] == 0 and eng.device == "cpu" and eng.info["inference_precision_hint"] == "f32"


def test_openvino_gpu_and_npu_compile_calls(fake_ov: dict, caplog) -> None:
    fake_ov["devices"] = ["CPU", "GPU.0", "NPU"]
    eng = load_engine(fake_ov["xml"], threads=2, device="gpu")
    # f32 pinned (a GPU defaults to f16); the CPU thread setting does not apply there.
    assert fake_ov["calls"][-1] == ("GPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    assert eng.device == "gpu" and eng.info["guard_covered"] is True and eng.info["threads"] is None
    x = np.random.default_rng(1).normal(size=(1, 3, S, S)).astype(np.float32)
    np.testing.assert_allclose(eng.run(x)[1], reference(x)[1], rtol=1e-5)
    with caplog.at_level(logging.WARNING, logger="edge.engines"):
        eng = load_engine(fake_ov["xml"], device="npu")
    assert fake_ov["calls"][-1] == ("NPU", {"PERFORMANCE_HINT": "LATENCY"})
    assert eng.info["guard_covered"] is False and eng.info["reduced_precision"] == ["fp16"]
    assert "does not cover" in caplog.text and "edge-calibrate --device npu" in caplog.text
    assert load_engine(fake_ov["xml"], device="auto").device == "gpu"  # NPU not covered: skipped
    _covering(fake_ov["xml"], ["fp16"])
    assert load_engine(fake_ov["xml"], device="auto").device == "npu"
    assert load_engine(fake_ov["xml"], device="gpu").info["inference_precision_hint"] == "f16"
    assert fake_ov["calls"][-1] == ("GPU", {"INFERENCE_PRECISION_HINT": "f16", "PERFORMANCE_HINT": "LATENCY"})


def test_openvino_missing_device_is_one_line(fake_ov: dict) -> None:
    with pytest.raises(DeviceError) as err:
        load_engine(fake_ov["xml"], device="gpu")
    assert str(err.value).startswith("--device gpu: OpenVINO has no GPU device here (available: CPU); install Intel's "
                                     "GPU compute runtime")
    assert not fake_ov["calls"]


# ---- edge-run / edge-calibrate ------------------------------------------------------------------------
def test_device_and_cache_flags_toml_and_bad_value(tmp_path: Path, onnx_model: Path) -> None:
    cfg = parse_config(RunConfig, ["--model", str(onnx_model), "--device", "tensorrt", "--trt-cache-dir", "/x"],
                       "edge-run", "")
    assert (cfg.device, cfg.trt_cache_dir) == ("tensorrt", "/x")
    assert parse_config(RunConfig, ["--model", "m.onnx"], "edge-run", "").device == "cpu"  # default unchanged
    toml = tmp_path / "edge.toml"
    toml.write_text('model = "m.onnx"\ndevice = "auto"\ntrt_cache_dir = "/var/lib/dcam-edge/trt-cache"\n')
    cfg = parse_config(RunConfig, ["--config", str(toml)], "edge-run", "")
    assert (cfg.device, cfg.trt_cache_dir) == ("auto", "/var/lib/dcam-edge/trt-cache")
    with pytest.raises(ConfigError, match="--device 'gpu0': expected one of cpu, cuda, tensorrt, gpu, npu, auto"):
        parse_config(RunConfig, ["--model", "m.onnx", "--device", "gpu0"], "edge-run", "")


def test_cli_missing_device_is_one_error_line_exit_2(tmp_path: Path, onnx_model: Path, capsys) -> None:
    from edge.cli import calibrate_main, run_main
    imgs = str(_images(tmp_path / "i", [127]))
    for main in (run_main, calibrate_main):
        assert main(["--model", str(onnx_model), "--source", imgs, "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --device cuda: ONNX Runtime has no CUDAExecutionProvider")
        assert "onnxruntime-gpu" in err[0]


def test_run_reports_the_device_in_log_status_and_summary(tmp_path: Path, onnx_model: Path, fake_ort: dict,
                                                         caplog) -> None:
    import io

    from edge.counters import RuntimeCounters
    from edge.runner import run
    fake_ort["available"] = [CUDA, ORT]
    imgs = str(_images(tmp_path / "i", [100, 120]))
    metrics = RuntimeCounters()
    with caplog.at_level(logging.INFO, logger="edge.runner"):
        summary = run(RunConfig(model=str(onnx_model), device="cuda", source=SourceConfig(source=imgs)),
                      out=io.StringIO(), metrics=metrics, sinks=[])
    assert "device cuda: CUDAExecutionProvider, CPUExecutionProvider" in caplog.text
    assert summary["frames"] == 2 and summary["engine"]["device"] == "cuda"
    assert summary["engine"]["providers"] == [CUDA, ORT]
    snap = metrics.snapshot()
    assert snap["device"] == "cuda" and snap["engine_info"]["providers"] == [CUDA, ORT]
    assert "model" not in snap["engine_info"] and snap["engine_info"]["engine"] == "onnxruntime"


# ---- bench-latency --------------------------------------------------------------------------------------
def test_bench_runs_each_file_on_each_supported_device(tmp_path: Path, onnx_model: Path, capsys) -> None:
    """--device cpu,cuda,gpu on an .onnx file: a cpu row, a failed cuda row (no GPU here) saying what to install,
    and no gpu row (not an ONNX Runtime device); the Device column and JSON key say where each row ran."""
    from bench.cli import main
    out_json, out_md = tmp_path / "rows.json", tmp_path / "report.md"
    rc = main(["--model", str(onnx_model), "--device", "cpu,cuda,gpu", "--threads", "1", "--runs", "3",
               "--warmup", "1", "--e2e-runs", "0", "--gemm-sizes", "0", "--no-eager", "--frame-size", "32",
               "--json", str(out_json), "--markdown", str(out_md)])
    captured = capsys.readouterr()
    rows = json.loads(out_json.read_text())
    assert rc == 1  # the cuda row failed
    by_device = {r["device"]: r for r in rows}
    assert set(by_device) == {"cpu", "cuda"}
    cpu, cuda = by_device["cpu"], by_device["cuda"]
    assert cpu["status"] == "ok" and cpu["providers"] == [ORT] and cpu["median_ms"] > 0
    assert cuda["status"] == "failed" and "no CUDAExecutionProvider" in cuda["error"]
    assert "onnxruntime-gpu" in cuda["error"]
    md = out_md.read_text()
    assert "| Model | Engine | Device | Prec." in md and "| tiny.onnx | onnxruntime | cuda |" in md
    assert "tiny.onnx @ 1 thr on cuda: --device cuda" in md
    assert "tiny.onnx: not run on gpu (onnxruntime does not support it)" in md
    assert "tiny.onnx @ 1 thr on cuda failed" in captured.err


def test_bench_device_flag_errors(tmp_path: Path, onnx_model: Path, capsys) -> None:
    from bench.cli import main
    assert main(["--model", str(onnx_model), "--device", "cpu,xpu"]) == 2
    assert "--device 'cpu,xpu': expected cpu, cuda" in capsys.readouterr().err
    assert main(["--model", str(onnx_model), "--device", "npu", "--gemm-sizes", "0", "--no-eager"]) == 2
    assert "--device npu: no model file's engine supports it" in capsys.readouterr().err


def test_accelerator_rows_have_no_cpu_peak_and_match_their_own_fp32_row() -> None:
    from bench.files import ModelFile
    from bench.rows import build_rows
    files = [ModelFile(Path(f"/m/{n}"), n, "onnx", None, None, p, 1.0, 1.0, "graph")
             for n, p in (("dcam.onnx", "fp32"), ("dcam.int8.onnx", "int8"))]
    ok = {"status": "ok", "infer_ms": [2.0, 2.0, 2.0], "peak_rss_mb": 50.0}
    results = {("gemm", 1): {"status": "ok", "gemm": [{"backend": "numpy", "precision": "fp32", "threads": 1,
                                                         "size": 64, "median_ms": 1.0, "gmac_per_s": 100.0}]},
               ("file", "/m/dcam.onnx", "cpu", 1): {**ok, "device": "cpu", "providers": [ORT]},
               ("file", "/m/dcam.onnx", "tensorrt", 1): {**ok, "device": "tensorrt", "providers": [TRT, CUDA, ORT],
                                                         "reduced_precision": ["fp16"]},
               ("file", "/m/dcam.int8.onnx", "tensorrt", 1): {**ok, "device": "tensorrt"},
               ("accuracy", "/m/dcam.onnx", "cpu"): {"status": "ok", "per_category": {"a": {"image_auroc": 0.9}},
                                                    "scores": [1, 2, 3]},
               ("accuracy", "/m/dcam.onnx", "tensorrt"): {"status": "ok", "per_category": {"a": {"image_auroc": 0.8}},
                                                         "scores": [1, 2, 3]},
               ("accuracy", "/m/dcam.int8.onnx", "tensorrt"): {"status": "ok",
                                                              "per_category": {"a": {"image_auroc": 0.7}},
                                                              "scores": [3, 2, 1]}}
    rows = build_rows(files, results, {}, {"runs": 3, "warmup": 0, "rounds": 1}, 2)
    assert [(Path(r["model"]).name, r["device"]) for r in rows] == [("dcam.onnx", "cpu"), ("dcam.onnx", "tensorrt"),
                                                                    ("dcam.int8.onnx", "tensorrt")]
    cpu, trt, q = rows
    assert cpu["peak_fraction"] is not None and trt["peak_fraction"] is None and trt["peak_gmac_per_s"] is None
    assert trt["providers"] == [TRT, CUDA, ORT] and "computes in fp16" in trt["notes"]
    assert q["image_auroc_delta"] == pytest.approx(0.7 - 0.8)  # vs the fp32 file on the same device


# ---- torch / engine imports ---------------------------------------------------------------------------
def test_device_table_imports_no_engine_and_no_torch() -> None:
    code = ("import sys, edge.devices, edge.engines, edge.config, edge.runner\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'onnxruntime', 'openvino', 'ai_edge_litert', 'train', 'export'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_service_readme_has_the_jetson_gpu_guide() -> None:
    text = (ROOT / "edge" / "service" / "README.md").read_text()
    for needle in ("Jetson Zoo", "onnxruntime-gpu", "/var/lib/dcam-edge/trt-cache", "--device tensorrt",
                   "bench-latency", "--device cpu,cuda,tensorrt", "not measured", "render", "--device gpu",
                   "--device npu"):
        assert needle in text, needle

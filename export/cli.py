"""``dcam-export``: a dcam-train run → dcam[.int8].{onnx,xml/.bin,tflite} + manifests, with an accuracy guard.

Exit status: 0 success; 1 the int8 accuracy guard failed (files are written, their manifests say so);
2 bad input (missing run dir, corrupt checkpoint, unknown format, missing converter package).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .config import (FORMATS, ONNX_CALIBRATIONS, ONNX_INT8_SCOPES, OPENVINO_BIAS_CORRECTIONS, PRECISIONS,
                     RECOMMENDED_CALIB_SAMPLES, THRESHOLD_MODES, TFLITE_INT8_RECIPES, AccuracyGuardError, ExportConfig)

DEFAULTS = ExportConfig(run="-", out="-")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcam-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="dcam-train run directory (config.json + best.pt)")
    p.add_argument("--out", required=True, help="output directory for the model files and manifests")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"comma-separated subset of {','.join(PRECISIONS)}")
    p.add_argument("--calib-data", default=None,
                   help="folder of normal images for int8 calibration (default: the run's training normals)")
    p.add_argument("--calib-samples", type=int, default=DEFAULTS.calib_samples,
                   help=f"at most this many calibration images (warning under {RECOMMENDED_CALIB_SAMPLES})")
    p.add_argument("--threshold-mode", choices=THRESHOLD_MODES, default=DEFAULTS.threshold_mode,
                   help="fpr: false-alarm rate on validation normals; f1: F1-optimal on labelled test images")
    p.add_argument("--target-fpr", type=float, default=DEFAULTS.target_fpr,
                   help="false-alarm rate on normal images for --threshold-mode fpr")
    p.add_argument("--allow-accuracy-drop", action="store_true",
                   help="exit 0 even when an int8 file fails the accuracy guard")
    p.add_argument("--max-image-auroc-drop", type=float, default=DEFAULTS.max_image_auroc_drop,
                   help="guard: largest allowed int8 image-AUROC drop vs fp32, in points")
    p.add_argument("--max-pixel-auroc-drop", type=float, default=DEFAULTS.max_pixel_auroc_drop,
                   help="guard: largest allowed int8 pixel-AUROC drop vs fp32, in points")
    p.add_argument("--min-score-spearman", type=float, default=DEFAULTS.min_score_spearman,
                   help="guard: smallest allowed Spearman of int8 vs fp32 image scores on validation normals")
    p.add_argument("--threads", type=int, default=DEFAULTS.threads, help="engine threads for evaluation/timing")
    p.add_argument("--onnx-int8-scope", choices=ONNX_INT8_SCOPES, default=DEFAULTS.onnx_int8_scope,
                   help="backbone: quantise every backbone op; conv: only Conv/MatMul/Gemm (head always fp32)")
    p.add_argument("--onnx-calibration", choices=ONNX_CALIBRATIONS, default=DEFAULTS.onnx_calibration,
                   help="ONNX Runtime activation-range calibration method")
    p.add_argument("--tflite-int8", choices=TFLITE_INT8_RECIPES, default=DEFAULTS.tflite_int8,
                   help="static: int8 conv weights+activations (calibrated); dynamic: int8 weights, dynamic range")
    p.add_argument("--openvino-bias-correction", choices=OPENVINO_BIAS_CORRECTIONS,
                   default=DEFAULTS.openvino_bias_correction,
                   help="NNCF bias correction after int8 quantisation: full (more accurate) or fast")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the calibration-image subset")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = ExportConfig(**vars(args))  # flags map 1:1 onto fields
        from .pipeline import run_export
        result = run_export(cfg)
    except AccuracyGuardError as exc:
        result = getattr(exc, "result", None)
        if result is not None:
            print(result.table())
        bar = "!" * 78
        print(f"{bar}\nerror: {exc}\n{bar}", file=sys.stderr)
        return 1
    except ValueError as exc:  # ExportError, EngineError, ManifestError, CalibrationError, ...
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    print(result.table())
    if not result.guard_passed:
        print("warning: the accuracy guard failed for some files (accepted by --allow-accuracy-drop)",
              file=sys.stderr)
    print(f"wrote {len(result.files)} model files with manifests to {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

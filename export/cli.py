"""``dcam-export``: a dcam-train run → dcam[.int8].{onnx,xml/.bin,tflite} + manifests, with an accuracy guard.

Exit status: 0 success; 1 the int8 accuracy guard failed (files are written, their manifests say so);
2 bad input (missing run dir, corrupt checkpoint, unknown format, missing converter package).
Flags and ``--config FILE.toml`` keys are ExportConfig's fields (edge.cliconfig).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from edge.cliconfig import ConfigCli, run_cli

from .config import ExportConfig
from .pipeline import AccuracyGuardError

CLI = ConfigCli(ExportConfig, "dcam-export", __doc__.split("\n\n")[0])


def _export(argv: Sequence[str] | None) -> int:
    cfg = CLI.parse(argv)
    from .pipeline import run_export
    try:
        result = run_export(cfg)
    except AccuracyGuardError as exc:
        if exc.result is not None:
            print(exc.result.table())
        bar = "!" * 78
        print(f"{bar}\nerror: {exc}\n{bar}", file=sys.stderr)
        return 1
    print(result.table())
    if not result.guard_passed:
        print("warning: the accuracy guard failed for some files (accepted by --allow-accuracy-drop)",
              file=sys.stderr)
    print(f"wrote {len(result.files)} model files with manifests to {result.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``dcam-export``: ExportError, EngineError, ManifestError, CalibrationError (ValueErrors) → one error line."""
    return run_cli(lambda: _export(argv))


if __name__ == "__main__":
    sys.exit(main())

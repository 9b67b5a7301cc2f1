"""Console entry points of the PyTorch side: ``dcam-train``, ``dcam-eval``, ``dcam-export``, ``dcam-demo``.

An edge-only install (numpy + OpenCV + one engine) has these scripts too; importing the real
``main`` there dies in ``import torch`` with a traceback.  Each wrapper checks for torch first
(without importing it) and otherwise prints one ``error:`` line with the install command and
returns exit status 2.
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from edge.cliconfig import run_cli

TORCH_PIN = "torch==2.13.0"  # the CPU wheel; installed before the extra so pip does not pull the CUDA build
OWN_PACKAGES = ("edge", "train", "export", "bench")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-removed package (no __spec__) counts as absent
        return False


class MissingExtraError(ValueError):
    """A torch-side command on an install without its extra (PyTorch, a converter, matplotlib, ...)."""


def _main_of(prog: str, target: str, extra: str) -> Callable[[], int | None]:
    """The ``module:function`` behind ``prog``, or MissingExtraError with the install line."""
    hint = f"pip install {TORCH_PIN} && pip install 'dcam-edge[{extra}]'"
    if not _installed("torch"):
        raise MissingExtraError(f"{prog} needs PyTorch: {hint}")
    module, func = target.split(":")
    try:
        main: Callable[[], int | None] = getattr(importlib.import_module(module), func)
        return main
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] in OWN_PACKAGES:
            raise  # a bug of this package, not a missing dependency
        # Another part of the extra (a converter, matplotlib, ...) is missing: same one-line answer.
        raise MissingExtraError(f"{prog} needs the Python package {e.name!r}: pip install 'dcam-edge[{extra}]'") \
            from None


def _launch(prog: str, target: str, extra: str) -> int:
    """Run ``module:function`` (argv from sys.argv), or print the install line and return 2 without PyTorch."""
    return run_cli(lambda: _main_of(prog, target, extra)(), errors=(MissingExtraError,))


def train_main() -> int:
    """``dcam-train``."""
    return _launch("dcam-train", "train.cli:main", "train")


def eval_main() -> int:
    """``dcam-eval``."""
    return _launch("dcam-eval", "train.evaluate:main", "train")


def export_main() -> int:
    """``dcam-export``."""
    return _launch("dcam-export", "export.cli:main", "export")


def demo_main() -> int:
    """``dcam-demo`` (trains and exports, so it needs the export extra)."""
    return _launch("dcam-demo", "train.demo:main", "export")

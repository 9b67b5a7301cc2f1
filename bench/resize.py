"""``python -m bench.resize``: what each resize policy (edge.preprocess.RESIZE_METHODS) costs on camera frames,
and what each decode policy (edge.preprocess.DECODES) costs on image files.

    python -m bench.resize [--image photo.png] [--sizes 1024x1024,640x480,1920x1080] [--threads 1] [--json OUT]

Times ``resize_rgb`` (the one preprocessing path's resize) from each frame size to the model input and reports,
per policy, the median milliseconds and how far its pixels are from the exact area average ("area": OpenCV
INTER_AREA) — max and mean absolute grey-level difference. The same frame saved as a JPEG (quality 95) is then
read the way training and edge-run's file source read it (``load_view``: file → model view)
with each decode policy, timed and compared with the same reference (so the JPEG rows include the compression
error). The frame is a real photograph (scikit-image's ``astronaut`` when no ``--image`` is given: smooth
regions, edges, fine texture) resized to each size with bicubic interpolation, so the test content is the same
at every size.
"""
from __future__ import annotations

import functools
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.stats import time_median_ms
from edge.cliconfig import ConfigCli, option, run_cli
from edge.preprocess import (
    DECODES,
    RESIZE_METHODS,
    PreprocessSpec,
    decode_image,
    fit_frame,
    load_view,
    read_frame,
    resize_rgb,
)


def parse_size(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" (a --sizes item) → (width, height)."""
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise ValueError(f"--sizes: expected WIDTHxHEIGHT items, got {text!r}")
    return int(width), int(height)


@dataclass
class ResizeBenchConfig:
    """bench.resize options."""

    image: str = option("", "photograph to resize (default: scikit-image's astronaut)")
    sizes: tuple[str, ...] = option(("1024x1024", "640x480", "1280x720", "1920x1080"),
                                    "frame sizes WIDTHxHEIGHT, comma-separated", split=",")
    image_size: int = option(256, "model input side")
    threads: int = option(1, "OpenCV threads (edge-run gives OpenCV the engine's thread count)")
    runs: int = option(200, "timed resizes per policy and size")
    json: str = option("", "write the rows as JSON here")

    def __post_init__(self) -> None:
        for size in self.sizes:
            parse_size(size)
        if min(self.image_size, self.threads, self.runs) < 1:
            raise ValueError("--image-size, --threads and --runs must be positive")


def _photo(path: str) -> np.ndarray:
    if path:
        return decode_image(path)
    from skimage import data  # the dev/bench extra; --image works without it
    return np.ascontiguousarray(data.astronaut())


def _difference(view: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    diff = np.abs(view.astype(np.int16) - reference)
    return {"max_abs_diff_to_area": int(diff.max()), "mean_abs_diff_to_area": float(diff.mean())}


def measure(photo: np.ndarray, sizes: Sequence[tuple[int, int]], image_size: int, runs: int) -> list[dict[str, Any]]:
    """One row per (frame size, input, policy): input "frame" (a decoded camera frame, each resize policy) or
    "jpeg" (the frame as a JPEG file, each decode policy with the default resize): median ms, max / mean |Δ| to the
    area average of the frame."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            frame = cv2.resize(photo, (width, height), interpolation=cv2.INTER_CUBIC)
            area = resize_rgb(frame, image_size, "area").astype(np.int16)
            for method in RESIZE_METHODS:
                resize = functools.partial(resize_rgb, frame, image_size, method)
                rows.append({"frame": f"{width}x{height}", "input": "frame", "resize": method, "decode": None,
                             "median_ms": time_median_ms(resize, runs, warmup=5),
                             **_difference(resize(), area)})
            path = Path(tmp) / f"{width}x{height}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            for decode in DECODES:
                spec = PreprocessSpec(image_size, decode=decode)
                frame_read, reduction = read_frame(path, spec)
                read = functools.partial(load_view, path, spec)  # file → model view, as training and edge-run read
                rows.append({"frame": f"{width}x{height}", "input": "jpeg", "resize": spec.resize, "decode": decode,
                             "reduction": reduction, "median_ms": time_median_ms(read, runs, warmup=5),
                             **_difference(fit_frame(frame_read, spec), area)})
    return rows


def _decode_cell(row: dict[str, Any]) -> str:
    if row["decode"] is None:
        return "—"
    return row["decode"] + (f" (1/{row['reduction']})" if row["reduction"] > 1 else "")


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| frame | input | resize | decode | median ms | max / mean \\|Δ\\| to area (grey levels) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['frame']} | {r['input']} | {r['resize']} | {_decode_cell(r)} | {r['median_ms']:.2f} | "
              f"{r['max_abs_diff_to_area']} / {r['mean_abs_diff_to_area']:.2f} |" for r in rows]
    return "\n".join(lines)


def run(cfg: ResizeBenchConfig) -> int:
    cv2.setNumThreads(cfg.threads)
    rows = measure(_photo(cfg.image), [parse_size(s) for s in cfg.sizes], cfg.image_size, cfg.runs)
    print(markdown(rows))
    if cfg.json:
        Path(cfg.json).write_text(json.dumps({"threads": cfg.threads, "image_size": cfg.image_size, "rows": rows},
                                             indent=1))
    return 0


CLI = ConfigCli(ResizeBenchConfig, prog="python -m bench.resize", description=__doc__)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: run(CLI.parse(argv)))


if __name__ == "__main__":
    sys.exit(main())

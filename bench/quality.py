"""``bench-quality``: train and evaluate configurations on real-image data sets; one table, one plot.

    bench-quality --data /tmp/mtd /tmp/photoset --configs bench/quality_configs.toml --epochs 20 --out Q
    bench-quality --data /tmp/mtd --config-names dcam,knn --epochs 5,10,20 --out Q   # quality vs budget

Every cell is what a user gets from the same console scripts: ``dcam-train`` (one unified model over the
data set's categories, or ``--per-category``) then ``dcam-eval --json``, run as subprocesses. Writes
``Q/quality.json``, ``Q/quality.md`` (mean and per category: image AUROC, pixel AUROC, AUPRO, F1-max,
training seconds; per defect type: image AUROC) and ``Q/quality.png`` (mean image / pixel AUROC against
training seconds, one line per configuration). Runs already in ``Q`` are reused, so an interrupted
benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from tqdm import tqdm

from edge.cliconfig import ConfigCli, option, run_cli
from edge.jsonsafe import write_json

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max")
DEFAULT_CONFIGS = Path(__file__).with_name("quality_configs.toml")


class QualityError(ValueError):
    """Bad benchmark input (missing data set, unknown configuration, failed training)."""


@dataclass(frozen=True)
class QualityConfig:
    """One configuration: a name and the dcam-train flags that define it."""

    name: str
    args: tuple[str, ...]
    description: str = ""


@dataclass
class QualityBenchConfig:
    """bench-quality options (one field per flag and ``--config`` key)."""

    data: list[str] = option([], "MVTec-layout data set roots", metavar="DIR")
    configs: str = option(str(DEFAULT_CONFIGS), "TOML file of [[config]] name/args tables")
    # comma-separated subset of the file's configurations; "" = all
    config_names: str = option("", "comma-separated subset of --configs")
    epochs: tuple[int, ...] = option((20,), "comma-separated training budgets in epochs (one run each)", split=",")
    image_size: int = option(256, "image side in pixels")
    backbone: str = option("efficientnet_lite0", "teacher/student backbone")
    per_category: bool = option(False, "one model per category instead of one unified model per data set")
    device: str = option("auto", "auto, cpu or cuda[:N]")
    out: str = option("quality", "output directory (runs, quality.json/.md/.png)")
    # more dcam-train flags for every cell
    extra: tuple[str, ...] = option((), "dcam-train flags added to every run", nargs=argparse.REMAINDER)

    def __post_init__(self) -> None:
        if not self.data:
            raise QualityError("--data: expected one or more MVTec-layout data set roots")
        if not self.epochs or min(self.epochs) <= 0:
            raise QualityError(f"--epochs: expected comma-separated positive integers, got "
                               f"{','.join(map(str, self.epochs))!r}")


def load_configs(path: str | Path, names: str = "") -> list[QualityConfig]:
    """[[config]] tables with name, args (a list of dcam-train flags) and an optional description."""
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise QualityError(f"--configs {path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise QualityError(f"--configs {path}: not valid TOML ({exc})") from None
    configs = []
    for i, entry in enumerate(table.get("config", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not all(isinstance(a, str) for a in entry.get("args", [])):
            raise QualityError(f"--configs {path}: config #{i + 1} needs name = \"...\" and args = [\"--flag\", ...]")
        configs.append(QualityConfig(entry["name"], tuple(entry.get("args", [])), entry.get("description", "")))
    if not configs:
        raise QualityError(f"--configs {path}: no [[config]] tables")
    if names:
        wanted = [n for n in names.split(",") if n]
        known = {c.name: c for c in configs}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise QualityError(f"--config-names: {', '.join(missing)} not in {path} (has {', '.join(known)})")
        configs = [known[n] for n in wanted]
    return configs


def categories_of(data: Path) -> list[str]:
    from train.data import discover_categories

    return discover_categories(data)


def _run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if code != 0:
        last = [line for line in log.read_text().splitlines() if line.strip()][-1:] or ["(no output)"]
        raise QualityError(f"{' '.join(cmd[:4])} ... failed (exit {code}): {last[0]} — full log: {log}")


def train_seconds(run_dir: Path) -> float:
    history = json.loads((run_dir / "history.json").read_text())
    return float(sum(row.get("seconds", 0.0) for row in history))


def run_cell(bench: QualityBenchConfig, config: QualityConfig, data: Path, categories: str, epochs: int,
             run_dir: Path) -> dict[str, Any]:
    """Train (or reuse) one run and evaluate it; returns dcam-eval's JSON plus train_seconds."""
    result_path = run_dir / "eval.json"
    if not result_path.is_file():
        train = [sys.executable, "-m", "train", "--data", str(data), "--categories", categories,
                 "--backbone", bench.backbone, "--image-size", str(bench.image_size), "--epochs", str(epochs),
                 "--device", bench.device, "--cache-images", "--num-workers", "0", "--out", str(run_dir),
                 *config.args, *bench.extra]
        _run(train, run_dir / "train.log")
        _run([sys.executable, "-m", "train.evaluate", "--run", str(run_dir), "--data", str(data),
              "--device", bench.device, "--json", str(result_path)], run_dir / "eval.log")
    result = json.loads(result_path.read_text())
    result["train_seconds"] = train_seconds(run_dir)
    return result


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-category evaluations (one per category model) → one result with the same shape as a unified one."""
    categories: dict[str, Any] = {}
    for r in results:
        categories.update(r["categories"])
    mean = {k: _mean([row[k] for row in categories.values()]) for k in METRICS}
    return {"categories": categories, "mean": mean, "train_seconds": sum(r["train_seconds"] for r in results)}


def run_benchmark(bench: QualityBenchConfig, configs: Sequence[QualityConfig] | None = None) -> dict[str, Any]:
    """Every configuration × data set × budget; ``configs`` replaces the --configs file (dcam-ablate's rows)."""
    configs = list(configs) if configs is not None else load_configs(bench.configs, bench.config_names)
    datasets = [Path(d) for d in bench.data]
    for d in datasets:
        if not d.is_dir():
            raise QualityError(f"--data {d}: data set directory not found")
    out = Path(bench.out)
    cells: list[dict[str, Any]] = []
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(bench).items()}
    report: dict[str, Any] = {"settings": settings, "cells": cells}
    plan = [(c, d, e) for c in configs for d in datasets for e in bench.epochs]
    for config, data, epochs in tqdm(plan, desc="bench-quality", unit="run"):
        scope = categories_of(data) if bench.per_category else ["all"]
        results = [run_cell(bench, config, data, category, epochs,
                            out / "runs" / data.name / f"{config.name}-e{epochs}" / category)
                   for category in scope]
        result = merge(results) if bench.per_category else results[0]
        cells.append({"config": config.name, "args": list(config.args), "description": config.description,
                      "data": data.name, "epochs": epochs, "train_seconds": result["train_seconds"],
                      "mean": {k: result["mean"].get(k) for k in METRICS},
                      "categories": {cat: {**{k: row.get(k) for k in METRICS},
                                           "defects": {d: v["image_auroc"] for d, v in row.get("defects", {}).items()}}
                                     for cat, row in result["categories"].items()}})
        write_report(report, out)  # after every cell: an interrupted benchmark still leaves its table
    return report


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "quality.json", report, indent=1)
    (out / "quality.md").write_text(markdown(report))
    plot(report, out / "quality.png")


def _fmt(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def markdown(report: dict[str, Any]) -> str:
    """Mean table (config × data set), then per category and per defect type."""
    cells = report["cells"]
    lines = ["# Detection quality on real images", "",
             "| config | data | epochs | image AUROC | pixel AUROC | AUPRO | F1-max | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        m = c["mean"]
        lines.append(f"| {c['config']} | {c['data']} | {c['epochs']} | {_fmt(m['image_auroc'])} | "
                     f"{_fmt(m['pixel_auroc'])} | {_fmt(m['aupro'])} | {_fmt(m['image_f1_max'])} | "
                     f"{c['train_seconds']:.0f} |")
    lines += ["", "## Per category (image / pixel AUROC)", ""]
    for data in dict.fromkeys(c["data"] for c in cells):
        subset = [c for c in cells if c["data"] == data]
        cats = list(dict.fromkeys(cat for c in subset for cat in c["categories"]))
        lines += [f"### {data}", "", "| config | epochs | " + " | ".join(cats) + " |",
                  "|---|---|" + "---|" * len(cats)]
        for c in subset:
            row = [f"{_fmt(c['categories'][cat]['image_auroc'])} / {_fmt(c['categories'][cat]['pixel_auroc'])}"
                   if cat in c["categories"] else "" for cat in cats]
            lines.append(f"| {c['config']} | {c['epochs']} | " + " | ".join(row) + " |")
        defects = [(cat, d) for cat in cats for d in dict.fromkeys(
            d for c in subset for d in c["categories"].get(cat, {}).get("defects", {}))]
        lines += ["", "| config | epochs | " + " | ".join(f"{cat}/{d}" for cat, d in defects) + " |",
                  "|---|---|" + "---|" * len(defects)]
        for c in subset:
            row = [_fmt(c["categories"].get(cat, {}).get("defects", {}).get(d)) for cat, d in defects]
            lines.append(f"| {c['config']} | {c['epochs']} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Mean image and pixel AUROC against training seconds: one line per configuration and data set."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2)
    for (config, data) in dict.fromkeys((c["config"], c["data"]) for c in report["cells"]):
        points = sorted((c["train_seconds"], c["mean"]) for c in report["cells"]
                        if c["config"] == config and c["data"] == data)
        for ax, key in zip(axes, ("image_auroc", "pixel_auroc")):
            ax.plot([p[0] / 60 for p in points], [p[1][key] for p in points], marker="o", label=f"{config} · {data}")
    for ax, title in zip(axes, ("image AUROC", "pixel AUROC")):
        ax.set_xlabel("training minutes (this machine)")
        ax.set_ylabel(f"mean {title}")
        ax.set_title(f"{title} vs training budget")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")  # never over the points
    figure.savefig(path, dpi=110)


CLI = ConfigCli(QualityBenchConfig, "bench-quality", __doc__.split("\n\n")[0])


def _benchmark(argv: Sequence[str] | None) -> int:
    bench = CLI.parse(argv)
    report = run_benchmark(bench)
    print(markdown(report).split("\n## ")[0])
    print(f"wrote {bench.out}/quality.json, quality.md, quality.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``bench-quality``: QualityError and the other bad-input ValueErrors → one error line, exit status 2."""
    return run_cli(lambda: _benchmark(argv))


if __name__ == "__main__":
    sys.exit(main())

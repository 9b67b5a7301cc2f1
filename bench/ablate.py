"""``dcam-ablate``: run one paper table's rows on a data set and write it next to the paper's figures.

    dcam-ablate --table dcam-3 --data /tmp/photoset4 --epochs 6 --out ablate-dcam3

Each row is a set of dcam-train flags (train/models/dcam/tables.py, with the readings named there); the rows are
trained and evaluated through bench-quality's runner (the same console scripts as a user), so runs already in
``--out`` are reused. Writes ``table.md`` / ``table.json``: the paper's AUC-ROC and PRO (MVTec AD, the paper's
backbone and budget), the measured image AUROC, pixel AUROC and AUPRO, and each column's rank order, so the
paper's ordering can be compared even where absolute figures differ (other data, backbone, budget).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.cliconfig import ConfigCli, option, run_cli
from edge.jsonsafe import write_json
from train.models.dcam.tables import PAPER_TABLES, TableRow

from .quality import QualityBenchConfig, QualityConfig, QualityError, run_benchmark


@dataclass
class AblateConfig:
    """dcam-ablate options (one field per flag and ``--config`` key)."""

    table: str = option("dcam-3", "paper table: " + ", ".join(PAPER_TABLES))
    data: str = option("", "MVTec-layout data set root", metavar="DIR")
    epochs: int = option(20, "training epochs per row")
    image_size: int = option(256, "image side in pixels")
    backbone: str = option("efficientnet_lite0", "teacher/student backbone (the DCAM paper: resnet18)")
    device: str = option("auto", "auto, cpu or cuda[:N]")
    out: str = option("ablate", "output directory (runs, table.md, table.json)")
    extra: tuple[str, ...] = option((), "dcam-train flags added to every row", nargs=argparse.REMAINDER)

    def __post_init__(self) -> None:
        if self.table not in PAPER_TABLES:
            raise QualityError(f"--table: expected one of {', '.join(PAPER_TABLES)}, got {self.table!r}")
        if not self.data:
            raise QualityError("--data: expected an MVTec-layout data set root")
        if self.epochs <= 0:
            raise QualityError(f"--epochs: expected a positive integer, got {self.epochs}")


def row_config(row: TableRow) -> QualityConfig:
    """A table row as a bench-quality configuration (its run directory named after the row's label)."""
    return QualityConfig(re.sub(r"[^a-z0-9]+", "-", row.label.lower()).strip("-"), row.args, row.label)


def ranks(values: Sequence[float | None]) -> list[int | None]:
    """1 = best (highest); ties share the better rank; missing values have none."""
    present = [v for v in values if v is not None]
    return [None if v is None else 1 + sum(other > v for other in present) for v in values]


def table_report(name: str, rows: Sequence[TableRow], cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The paper's and the measured figures per row, with each column's ranks."""
    measured = [cell["mean"] for cell in cells]
    columns: dict[str, list[Any]] = {
        "paper_auroc": [r.paper_auroc for r in rows], "paper_pro": [r.paper_pro for r in rows],
        **{key: [m.get(key) for m in measured] for key in ("image_auroc", "pixel_auroc", "aupro")}}
    return {"table": name, "rows": [
        {"label": row.label, "args": list(row.args), **{k: v[i] for k, v in columns.items()},
         **{f"{k}_rank": ranks(v)[i] for k, v in columns.items()}} for i, row in enumerate(rows)]}


def markdown(report: dict[str, Any], settings: str) -> str:
    def cell(row: dict[str, Any], key: str) -> str:
        value = row[key]
        return "n/a" if value is None else f"{value:.3f} ({row[key + '_rank']})"

    lines = [f"# Paper table {report['table']}", "", settings, "",
             "| row | paper AUC-ROC | paper PRO | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['label']} | " + " | ".join(cell(row, k) for k in (
            "paper_auroc", "paper_pro", "image_auroc", "pixel_auroc", "aupro")) + " |")
    lines += ["", "(n) = rank within the column, 1 = best; the paper: MVTec AD, ResNet-18, 400 epochs."]
    return "\n".join(lines) + "\n"


def run_table(cfg: AblateConfig) -> dict[str, Any]:
    rows = PAPER_TABLES[cfg.table]
    bench = QualityBenchConfig(data=[cfg.data], epochs=(cfg.epochs,), image_size=cfg.image_size,
                               backbone=cfg.backbone, device=cfg.device, out=cfg.out, extra=cfg.extra)
    cells = run_benchmark(bench, [row_config(row) for row in rows])["cells"]
    report = table_report(cfg.table, rows, cells)
    report["settings"] = {"data": cfg.data, "epochs": cfg.epochs, "image_size": cfg.image_size,
                          "backbone": cfg.backbone, "extra": list(cfg.extra)}
    out = Path(cfg.out)
    write_json(out / "table.json", report, indent=1)
    settings = (f"Measured: `{Path(cfg.data).name}`, {cfg.backbone}, {cfg.image_size} px, {cfg.epochs} epochs, "
                f"one unified model per row.")
    (out / "table.md").write_text(markdown(report, settings))
    return report


CLI = ConfigCli(AblateConfig, "dcam-ablate", __doc__.split("\n\n")[0])


def _ablate(argv: Sequence[str] | None) -> int:
    cfg = CLI.parse(argv)
    run_table(cfg)
    print((Path(cfg.out) / "table.md").read_text())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``dcam-ablate``: bad input → one error line, exit status 2."""
    return run_cli(lambda: _ablate(argv))


if __name__ == "__main__":
    sys.exit(main())

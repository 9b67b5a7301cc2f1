"""DCAM's experiments (Jena et al., "Attend, Distill, Detect", §4.4–4.5) as dcam-train flags, one row per table row.

Readings where the paper is terse (train/models/dcam/README.md): every row is the paper recipe (``--preset paper``)
with the attention as a training-time side branch (the paper drops it at inference, which only a branch allows);
Table 3's "only MSE as loss" is the plain feature MSE (under STFPM's normalised MSE a spatial attention's
per-position scale cancels and "Spatial" would be STFPM); Tables 4 and 5 compare the matching terms without the
attention, which Table 6 then adds ("with and without the DCAM").
"""
from __future__ import annotations

from dataclasses import dataclass

# Every loss weight off: a row then switches on exactly its own terms.
_NO_LOSS = ("--loss-channel-cosine", "0", "--loss-spatial-cosine", "0", "--loss-channel-kl", "0",
            "--loss-spatial-kl", "0", "--loss-mse", "0")
_PAPER = ("--method", "dcam", "--preset", "paper")


@dataclass(frozen=True)
class TableRow:
    """One row: its label in the paper, the dcam-train flags that run it, and the paper's MVTec AD figures."""

    label: str
    args: tuple[str, ...]
    paper_auroc: float
    paper_pro: float


PAPER_TABLES: dict[str, tuple[TableRow, ...]] = {
    "dcam-1": (TableRow("STFPM", ("--method", "stfpm", "--preset", "paper"), 0.9128, 0.8301),
               TableRow("Ours", _PAPER, 0.9520, 0.8981)),
    "dcam-3": tuple(TableRow(label, (*_PAPER, *_NO_LOSS, "--loss-mse", "1", "--loss-mse-mode", "raw",
                                     "--attention", attention), auroc, pro)
                    for label, attention, auroc, pro in (("Channel", "channel", 0.9412, 0.8835),
                                                         ("Spatial", "spatial", 0.9336, 0.8629),
                                                         ("Combined (Channel + Spatial)", "both", 0.9367, 0.8871))),
    "dcam-4": (TableRow("CD channel", (*_PAPER, *_NO_LOSS, "--loss-channel-cosine", "1", "--attention", "none"),
                        0.9392, 0.8796),
               TableRow("CD spatial", (*_PAPER, *_NO_LOSS, "--loss-spatial-cosine", "1", "--attention", "none"),
                        0.8849, 0.8081)),
    "dcam-5": (TableRow("KLD channel", (*_PAPER, *_NO_LOSS, "--loss-channel-kl", "1", "--attention", "none"),
                        0.938, 0.8845),
               TableRow("KLD spatial", (*_PAPER, *_NO_LOSS, "--loss-spatial-kl", "1", "--attention", "none"),
                        0.9467, 0.886)),
    "dcam-6": (TableRow("DCAM (channel) ✓, CD channel + KLD spatial", _PAPER, 0.9520, 0.8981),
               TableRow("DCAM ✗, CD channel + KLD spatial", (*_PAPER, "--attention", "none"), 0.9514, 0.8859)),
}

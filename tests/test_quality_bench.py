"""bench.photoset (real-photo benchmark data) and bench.quality (train + evaluate configurations → table/plot)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest


def test_photoset_builds_an_mvtec_layout_with_exact_masks(tmp_path: Path) -> None:
    from bench.photoset import DEFECTS, build
    from train.data import list_test_samples, list_train_samples

    root = build(tmp_path / "photos", ["brick", "coffee"], size=64, n_train=6, n_test_good=3, n_per_defect=2)
    train = list_train_samples(root, ["brick", "coffee"])
    test = list_test_samples(root, ["brick"])
    assert len(train) == 12
    assert sorted({s.defect for s in test}) == sorted(("good",) + DEFECTS)
    for s in test:
        image = cv2.imread(str(s.path))
        assert image.shape == (64, 64, 3)
        if s.label:
            mask = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
            assert set(np.unique(mask)) <= {0, 255} and (mask > 0).any()
    # Seeded: the same call writes the same pixels.
    again = build(tmp_path / "again", ["brick"], size=64, n_train=6, n_test_good=3, n_per_defect=2)
    a, b = (cv2.imread(str(r / "brick" / "test" / "stain" / "000.png")) for r in (root, again))
    assert np.array_equal(a, b)


def test_defect_changes_pixels_inside_its_mask_only() -> None:
    from bench.photoset import DEFECTS, add_defect

    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (96, 96, 3)).astype(np.uint8)
    other = np.full((96, 96, 3), 255, np.uint8)
    for defect in DEFECTS:
        image, mask = add_defect(base, defect, other, np.random.default_rng(1))
        changed = np.abs(image.astype(int) - base.astype(int)).max(2) > 8
        inside = mask > 0
        assert changed[inside].mean() > 0.3, defect  # the mask marks what visibly changed
        assert changed[~inside].mean() < 0.01, defect  # and almost nothing changed outside it
    with pytest.raises(ValueError, match="unknown defect"):
        add_defect(base, "dent", other, rng)


def test_quality_configs_file_reads_and_rejects_bad_entries(tmp_path: Path) -> None:
    from bench.quality import DEFAULT_CONFIGS, QualityError, load_configs

    configs = load_configs(DEFAULT_CONFIGS)
    assert {"knn", "dcam"} <= {c.name for c in configs}
    assert [c.name for c in load_configs(DEFAULT_CONFIGS, "knn")] == ["knn"]
    with pytest.raises(QualityError, match="not in"):
        load_configs(DEFAULT_CONFIGS, "nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[config]]\nargs = [1]\n")
    with pytest.raises(QualityError, match="config #1"):
        load_configs(bad)


def test_quality_bench_trains_evaluates_and_writes_table_and_plot(synthetic_root, tmp_path: Path) -> None:
    from bench.quality import main

    configs = tmp_path / "configs.toml"
    configs.write_text('[[config]]\nname = "knn"\nargs = ["--method", "knn", "--knn-bank-size", "200"]\n'
                       '[[config]]\nname = "stfpm"\nargs = ["--method", "stfpm", "--max-steps-per-epoch", "1"]\n')
    out = tmp_path / "q"
    assert main(["--data", str(synthetic_root), "--configs", str(configs), "--epochs", "1", "--image-size", "64",
                 "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads((out / "quality.json").read_text())
    assert [c["config"] for c in report["cells"]] == ["knn", "stfpm"]
    for cell in report["cells"]:
        evaluation = json.loads((out / "runs" / synthetic_root.name / f"{cell['config']}-e1" / "all" /
                                 "eval.json").read_text())
        assert cell["mean"]["image_auroc"] == pytest.approx(evaluation["mean"]["image_auroc"])
        assert cell["train_seconds"] > 0
        assert set(cell["categories"]) == set(evaluation["categories"])
    markdown = (out / "quality.md").read_text()
    assert "| knn |" in markdown and "| stfpm |" in markdown
    assert (out / "quality.png").stat().st_size > 1000
    # A second call reuses the finished runs (an interrupted benchmark continues).
    stamp = (out / "runs" / synthetic_root.name / "knn-e1" / "all" / "eval.json").stat().st_mtime_ns
    assert main(["--data", str(synthetic_root), "--configs", str(configs), "--epochs", "1", "--image-size", "64",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "runs" / synthetic_root.name / "knn-e1" / "all" / "eval.json").stat().st_mtime_ns == stamp


def test_quality_bench_reports_a_failed_training_in_one_line(synthetic_root, tmp_path: Path, capsys) -> None:
    from bench.quality import main

    configs = tmp_path / "configs.toml"
    configs.write_text('[[config]]\nname = "bad"\nargs = ["--method", "nope"]\n')
    assert main(["--data", str(synthetic_root), "--configs", str(configs), "--epochs", "1", "--out",
                 str(tmp_path / "q")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "failed" in errors[0] and "train.log" in errors[0]


def test_dcam_ablate_runs_a_paper_table_and_ranks_it_next_to_the_paper(synthetic_root, tmp_path: Path) -> None:
    from bench.ablate import main, ranks
    from train.models.dcam.tables import PAPER_TABLES

    assert ranks([0.9, 0.95, 0.9, None]) == [2, 1, 2, None]
    out = tmp_path / "t"
    assert main(["--table", "dcam-6", "--data", str(synthetic_root), "--epochs", "1", "--image-size", "64",
                 "--device", "cpu", "--out", str(out), "--extra", "--max-steps-per-epoch", "1"]) == 0
    report = json.loads((out / "table.json").read_text())
    rows = PAPER_TABLES["dcam-6"]
    assert [r["label"] for r in report["rows"]] == [r.label for r in rows]
    for row, paper in zip(report["rows"], rows):
        run = out / "runs" / synthetic_root.name
        run = next(p for p in run.iterdir() if (p / "all" / "config.json").is_file()
                   and json.loads((p / "all" / "config.json").read_text())["model"]["attention"]
                   == ("none" if "--attention" in paper.args else "channel"))
        evaluation = json.loads((run / "all" / "eval.json").read_text())
        assert row["image_auroc"] == pytest.approx(evaluation["mean"]["image_auroc"])
        assert row["paper_auroc"] == paper.paper_auroc
    assert report["rows"][0]["paper_auroc_rank"] == 1 and report["rows"][1]["paper_auroc_rank"] == 2
    assert "| DCAM ✗, CD channel + KLD spatial |" in (out / "table.md").read_text()

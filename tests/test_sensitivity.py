"""export.sensitivity: int8 fake quantisation, hand-checked, and the per-layer report on a tiny run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch


def test_fake_quantisation_matches_hand_computed_int8() -> None:
    from export.sensitivity import fake_quantize_activation, fake_quantize_weight
    w = torch.tensor([[[[0.3, -1.0]]], [[[0.013, 0.02]]]])
    q = fake_quantize_weight(w)
    s0, s1 = 1.0 / 127, 0.02 / 127  # per output channel: max|w| / 127
    expected = torch.tensor([[[[round(0.3 / s0) * s0, -1.0]]], [[[round(0.013 / s1) * s1, 0.02]]]])
    torch.testing.assert_close(q, expected)
    s7 = 1.0 / 63  # 7 bits (dcam-export's default): max|w| / 63
    torch.testing.assert_close(fake_quantize_weight(w, 7)[0], torch.tensor([[[round(0.3 / s7) * s7, -1.0]]]))
    x = torch.tensor([-0.5, 0.0, 0.3, 2.0, 5.0])
    scale = 2.5 / 255  # range [-0.5, 2.0], zero point 51
    zp = round(0.5 / scale)
    expected_x = torch.tensor([(min(max(round(v / scale) + zp, 0), 255) - zp) * scale for v in x.tolist()])
    torch.testing.assert_close(fake_quantize_activation(x, -0.5, 2.0), expected_x)


def test_sensitivity_reports_every_conv_of_both_networks(tiny_run: Path, tmp_path: Path) -> None:
    from export.sensitivity import main
    assert main(["--run", str(tiny_run), "--out", str(tmp_path), "--calib-images", "4", "--val-images", "4",
                 "--batch-size", "4"]) == 0
    report = json.loads((tmp_path / "sensitivity.json").read_text())
    layers = report["layers"]
    assert {r["network"] for r in layers} == {"teacher", "student"}
    assert "depthwise" in {r["kind"] for r in layers} and "1x1" in {r["kind"] for r in layers}
    assert all(r["map_error"] >= 0 and r["input_range"][0] <= r["input_range"][1] for r in layers)
    assert max(r["map_error"] for r in layers) > 0  # rounding one layer moves the map
    assert report["all_layers"]["map_error"] >= np.median([r["map_error"] for r in layers])
    assert report["head_inputs"]["map_error"] > 0  # uint8 features entering the fp32 head move the map too
    assert (tmp_path / "sensitivity.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--run"):
        from export.sensitivity import SensitivityConfig
        SensitivityConfig()

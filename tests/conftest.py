"""Shared session fixtures: a tiny synthetic MVTec dataset, a tiny trained run, its exports."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

# Two cores: keep each test process from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def wait_until(predicate, timeout: float = 10.0, step: float = 0.01) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed (bounded; returns the last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def tiny_train_config(data: Path, out: Path, **overrides):
    from train.config import ModelConfig, TrainConfig
    model = overrides.pop("model", None) or ModelConfig(method="dcam", backbone="efficientnet_lite0")
    kwargs = dict(data=str(data), out=str(out), image_size=64, epochs=2, batch_size=8, num_workers=0,
                  max_steps_per_epoch=3, seed=0)
    kwargs.update(overrides)
    return TrainConfig(model=model, **kwargs)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """MVTec-layout synthetic data: 3 categories, 64×64, 20 train/good, 4 good + 6 defective test images each."""
    from train.synthetic import make_synthetic_dataset
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, categories=3, image_size=64, train=20, test_good=4, test_defect=6,
                                  seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_run(synthetic_root, tmp_path_factory) -> Path:
    """A dcam / efficientnet_lite0 run at 64×64 trained for 2 short epochs."""
    from train.trainer import train
    return train(tiny_train_config(synthetic_root, tmp_path_factory.mktemp("runs") / "tiny"))


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory) -> Path:
    """dcam-export of tiny_run: all six files + manifests. The guard is reported, not enforced: with 12
    validation normals one swapped pair already moves Spearman below 0.95."""
    from export.cli import main
    out = tmp_path_factory.mktemp("export")
    assert main(["--run", str(tiny_run), "--out", str(out), "--calib-samples", "32", "--allow-accuracy-drop",
                 "--no-progress"]) == 0
    return out


@pytest.fixture(autouse=True)
def _no_small_alternate_signal_stack():
    """OpenVINO (also inside nncf/export) leaves an ~11 KB sigaltstack on this thread; with AVX-512/AMX state a
    signal (torch DataLoader's SIGCHLD handler) no longer fits on it and the test process dies with SIGSEGV."""
    yield
    from edge.signalstack import drop_small_alternate_signal_stack
    drop_small_alternate_signal_stack()

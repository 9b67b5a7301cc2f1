"""Training loop: best-checkpoint selection, safe checkpoints, resume, DDP equivalence."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config

from train.cli import main as train_main
from train.runs import RunError, load_run
from train.trainer import Trainer, train

REPO = Path(__file__).resolve().parents[1]


def _student_state(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["model"]
    return {k: v for k, v in state.items() if not k.startswith("teacher.")}


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=atol, rtol=0, msg=key)


def test_run_keeps_lowest_validation_loss_checkpoint(tiny_run):
    history = json.loads((tiny_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    best = torch.load(tiny_run / "best.pt", weights_only=True)
    best_row = min(history, key=lambda r: r["val_loss"])
    assert best["epoch"] + 1 == best_row["epoch"]
    assert best["val_loss"] == pytest.approx(best_row["val_loss"])
    # best.pt is self-contained (teacher included) and rebuilds the same model.
    model, cfg = load_run(tiny_run)
    assert any(k.startswith("teacher.") for k in best["model"])
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, best["model"][key])
    assert cfg.model.method == "dcam" and cfg.image_size == 64
    assert (tiny_run / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_resume_after_interrupt_continues_exactly(synthetic_root, tmp_path, monkeypatch):
    straight = train(tiny_train_config(synthetic_root, tmp_path / "straight", epochs=3))
    # Interrupt the second epoch (Ctrl-C), then run the same command again.
    calls = {"n": 0}
    original = Trainer._train_epoch

    def interrupted(self, epoch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_train_config(synthetic_root, tmp_path / "resumed", epochs=3))
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert json.loads((tmp_path / "resumed" / "history.json").read_text())[-1]["epoch"] == 1  # one epoch kept
    resumed = train(tiny_train_config(synthetic_root, tmp_path / "resumed", epochs=3))
    history = json.loads((resumed / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    _assert_states_close(_student_state(straight / "last.pt"), _student_state(resumed / "last.pt"), atol=1e-6)


def test_resume_refuses_changed_settings(synthetic_root, tmp_path):
    train(tiny_train_config(synthetic_root, tmp_path / "run", epochs=1))
    with pytest.raises(RunError, match="image-size"):
        train(tiny_train_config(synthetic_root, tmp_path / "run", epochs=2, image_size=96))
    # The preprocessing the student learnt on is part of the run (a run saved before --decode loads as "full").
    with pytest.raises(RunError, match=r"--decode was 'reduced' and is now 'full' \(pass --decode reduced to resume"):
        train(tiny_train_config(synthetic_root, tmp_path / "run", epochs=2, decode="full"))


def test_corrupt_checkpoint_and_missing_run_are_clear_errors(tiny_run, tmp_path):
    with pytest.raises(RunError, match="run directory not found"):
        load_run(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_run / "config.json").read_text())
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="best.pt: corrupt"):
        load_run(broken)


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert train_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing" in err[0]
    assert train_main(["--data", str(tmp_path), "--method", "bogus"]) == 2
    assert "--method" in capsys.readouterr().err


def test_amp_settings_and_bf16_autocast_step_on_cpu(synthetic_root, tmp_path):
    from train.trainer import amp_dtype
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype("auto", cpu) is None and amp_dtype("bf16", cpu) is torch.bfloat16
    assert amp_dtype("fp16", cuda) is torch.float16 and amp_dtype("off", cuda) is None
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA"):
        amp_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="--amp"):
        amp_dtype("fast", cpu)
    # The autocast code path the GPU uses, exercised on CPU with bf16 — in a child process: oneDNN's bf16
    # kernels enlarge the CPU's signal frame (AMX state), which then overflows the small alternate signal
    # stack pytest's faulthandler installed, and the next SIGCHLD kills the test process.
    _run(_train_cmd(synthetic_root, tmp_path / "amp", 1, 1, steps=2) + ["--amp", "bf16"])
    row = json.loads((tmp_path / "amp" / "history.json").read_text())[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])


def _train_cmd(data: Path, out: Path, epochs: int, nproc: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "train", "--nproc", str(nproc), "--data", str(data), "--out", str(out),
            "--backbone", "efficientnet_lite0", "--image-size", "64", "--batch-size", "8", "--epochs", str(epochs),
            "--max-steps-per-epoch", str(steps), "--num-workers", "0", "--seed", "0"]


def _run(cmd: list[str], threads: int = 1) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_equal_single_process_with_same_global_batch(synthetic_root, tmp_path):
    """One optimisation step on global batch 8: 1 process × 8 images vs 2 processes × 4 images (gloo).

    With the smooth mean: at the default hard quantile float32 reduction noise moves positions across the
    threshold (a discontinuous selection), so the global hard quantile has its own exact test below."""
    # NCHW: channels-last oneDNN kernels reorder their reductions with the thread count (the noise floor below
    # measured 12 % of one step on a Zen 3), which would hide what this test compares.
    smooth = ["--loss-hard-quantile", "0", "--no-channels-last"]
    _run(_train_cmd(synthetic_root, tmp_path / "single", 1, 1, steps=1) + smooth)
    _run(_train_cmd(synthetic_root, tmp_path / "ddp", 1, 2, steps=1) + smooth)
    # The noise floor: the same single-process step on 2 threads (another reduction order). On some CPUs
    # (oneDNN kernels picked per shape) it moves a weight by ~2 % of its step, on others by 1e-6.
    _run(_train_cmd(synthetic_root, tmp_path / "threads", 1, 1, steps=1) + smooth, threads=2)
    from train.config import ModelConfig
    from train.models import build_model
    from train.trainer import seed_everything
    seed_everything(0)
    init = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0")).state_dict()
    a, b = _student_state(tmp_path / "single" / "last.pt"), _student_state(tmp_path / "ddp" / "last.pt")
    noise = _student_state(tmp_path / "threads" / "last.pt")
    assert a.keys() == b.keys()
    # Equal up to float32 reduction-order noise, which is tiny next to the step itself; without
    # synchronised BatchNorm (or with different batches) the difference is as large as the step.
    # (Over many steps that noise grows chaotically; in float64 the runs agree to 1e-10.)
    for key in a:
        if a[key].is_floating_point() and not key.endswith(("running_mean", "running_var")):
            moved = (a[key] - init[key]).abs().max().item()
            floor = (a[key] - noise[key]).abs().max().item()
            assert floor <= 0.1 * moved + 1e-7, f"{key}: float32 noise alone is 10 % of the step"
            assert (a[key] - b[key]).abs().max().item() <= max(3 * floor, 0.01 * moved) + 1e-7, key
    single_hist = json.loads((tmp_path / "single" / "history.json").read_text())
    ddp_hist = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert ddp_hist[0]["train_loss"] == pytest.approx(single_hist[0]["train_loss"], rel=1e-5)
    assert ddp_hist[0]["train_images_per_s"] > 0


@pytest.mark.slow
def test_ddp_resume_equals_uninterrupted_ddp_run(synthetic_root, tmp_path):
    _run(_train_cmd(synthetic_root, tmp_path / "straight", 2, 2, steps=2))
    _run(_train_cmd(synthetic_root, tmp_path / "resumed", 1, 2, steps=2))
    _run(_train_cmd(synthetic_root, tmp_path / "resumed", 2, 2, steps=2))
    history = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    _assert_states_close(_student_state(tmp_path / "straight" / "last.pt"),
                         _student_state(tmp_path / "resumed" / "last.pt"), atol=1e-6)
    torch.load(tmp_path / "resumed" / "best.pt", weights_only=True)


def test_gradient_clipping_caps_the_step_of_summed_kl_terms_and_adam_takes_weight_decay(synthetic_root, tmp_path):
    from tests.conftest import tiny_train_config
    from train.config import ModelConfig, TrainConfig
    from train.trainer import build_optimizer, train
    # Eq. 5/6's sums make the KL terms ~100x the mean's, so the gradient is ~100x larger: clipped, it trains.
    model = ModelConfig(method="dcam", backbone="efficientnet_lite0", preset="paper", kl_reduction="sum")
    train(tiny_train_config(synthetic_root, tmp_path / "klsum", model=model, grad_clip_norm=5.0, epochs=1))
    row = json.loads((tmp_path / "klsum" / "history.json").read_text())[0]
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    assert row["train_grad_norm"] > 5.0  # the norm before clipping is reported, and it is above the cap
    with pytest.raises(ValueError, match="--grad-clip-norm"):
        TrainConfig(data="x", grad_clip_norm=-1.0)
    # --weight-decay reaches Adam (it used to be dropped); the RD family's papers state none, STFPM 1e-4.
    assert TrainConfig(data="x", model=ModelConfig(method="rd")).weight_decay == 0.0
    assert TrainConfig(data="x", model=ModelConfig(method="dcam")).weight_decay == pytest.approx(1e-4)
    parameter = torch.nn.Parameter(torch.ones(3))
    adam = build_optimizer(TrainConfig(data="x", model=ModelConfig(method="rd"), weight_decay=0.1), [parameter])
    parameter.grad = torch.zeros(3)
    adam.step()
    assert float(parameter.detach().max()) < 1.0  # the L2 term alone moved the weights toward 0


def _distributed_hard_mean_gradient(rank: int, world: int, port: int, values: torch.Tensor,
                                    split: list[int], out: str) -> None:
    import torch.distributed as dist

    from train.models.dcam.loss import hard_mean
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        local = values.split(split)[rank].clone().requires_grad_(True)
        loss = hard_mean(local, 0.9, world)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad": local.grad}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_distributed_hard_mean_equals_the_single_process_loss_and_gradient(tmp_path):
    """The global batch's hard quantile over 2 gloo processes with an uneven split (the last batch of an
    epoch): the processes' mean loss and their concatenated, DDP-averaged gradients equal one process's."""
    import socket

    import torch.multiprocessing as mp

    from train.models.dcam.loss import hard_mean
    values = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    single = values.clone().requires_grad_(True)
    expected = hard_mean(single, 0.9)
    expected.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    split = [31, 19]
    mp.start_processes(_distributed_hard_mean_gradient, args=(2, port, values, split, str(tmp_path)),
                       nprocs=2, start_method="spawn")
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    # DDP all-reduces gradients as a mean over processes; each process's loss is its share times world.
    assert float(sum(p["loss"] for p in parts)) / 2 == pytest.approx(float(expected), rel=1e-12)
    grad = torch.cat([p["grad"] for p in parts]) / 2
    assert torch.allclose(grad, single.grad, rtol=0, atol=1e-15)
    assert int((single.grad != 0).sum()) == 5  # the top 10 % of 50 positions carry the gradient


_ALLOCATION_PROBE = """
import ctypes, json
from train.device import keep_freed_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def mapped_bytes_of_a_24mb_block():
    block = libc.malloc(24 << 20)
    mapped = libc.mallinfo2().hblkhd
    libc.free(block)
    return mapped

before = mapped_bytes_of_a_24mb_block()
tuned = keep_freed_cpu_memory()
print(json.dumps({"tuned": tuned, "before": before, "after": mapped_bytes_of_a_24mb_block()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_cpu_training_keeps_activation_sized_blocks_in_the_heap():
    """A 24 MB block (a batch-16 activation) is mmapped by glibc's default and served from the heap after
    keep_freed_cpu_memory (no map + page faults + unmap per training step). Fresh process: the setting is global."""
    out = subprocess.run([sys.executable, "-c", _ALLOCATION_PROBE], capture_output=True, text=True, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["tuned"] is True
    assert probe["before"] >= 24 << 20
    assert probe["after"] < 24 << 20

"""Method presets ("default" = best measured recipe, "paper" = the papers exactly), the lr schedule, old runs."""
from __future__ import annotations

import json
import math

import pytest

from train.config import METHOD_PRESETS, METHODS, TRAIN_PRESETS, ModelConfig, TrainConfig, method_preset, train_preset


@pytest.mark.parametrize("method", METHODS)
def test_paper_preset_is_the_papers_table(method: str) -> None:
    cfg = TrainConfig(data="x", model=ModelConfig(method=method, preset="paper"))
    for key, value in METHOD_PRESETS[method].items():
        assert getattr(cfg.model, key) == value, key
    paper = TRAIN_PRESETS[method]
    assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.lr_schedule) == \
        (paper["optimizer"], paper["lr"], paper["epochs"], paper["batch_size"], "constant")


@pytest.mark.parametrize("method", METHODS)
def test_default_preset_fills_what_the_user_left_open_and_keeps_what_was_set(method: str) -> None:
    cfg = TrainConfig(data="x", model=ModelConfig(method=method))
    for key, value in method_preset(method, "default").items():
        assert getattr(cfg.model, key) == (tuple(value) if isinstance(value, list) else value), key
    assert cfg.lr_schedule == train_preset(method, "default")["lr_schedule"]
    explicit = TrainConfig(data="x", lr=0.0123, lr_schedule="constant",
                           model=ModelConfig(method=method, blur_sigma=1.5))
    assert (explicit.lr, explicit.lr_schedule, explicit.model.blur_sigma) == (0.0123, "constant", 1.5)


def test_unknown_preset_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="--preset"):
        ModelConfig(preset="fast")
    with pytest.raises(ValueError, match="--lr-schedule"):
        TrainConfig(data="x", lr_schedule="step")


def test_a_run_saved_before_presets_loads_with_the_papers_values(tmp_path) -> None:
    from train.runs import load_config

    saved = TrainConfig(data="x", model=ModelConfig(method="dcam", preset="paper")).to_dict()
    for key in ("preset", "levels"):
        del saved["model"][key]
    del saved["lr_schedule"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    cfg = load_config(tmp_path)
    assert (cfg.model.preset, cfg.model.levels, cfg.lr_schedule) == ("paper", (0, 1, 2), "constant")
    assert cfg.model.blur_sigma == METHOD_PRESETS["dcam"].get("blur_sigma", 0.0)


def test_a_run_saved_before_the_decode_policy_keeps_decoding_in_full_and_new_runs_reduce(tmp_path) -> None:
    from train.cli import build_parser, config_from_args
    from train.runs import load_config, preprocess_spec

    new = TrainConfig(data="x", model=ModelConfig(method="dcam", backbone="efficientnet_lite0"))
    assert new.decode == "reduced" and preprocess_spec(new).decode == "reduced"
    saved = new.to_dict()
    del saved["decode"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    old = load_config(tmp_path)
    assert old.decode == "full" and preprocess_spec(old).decode == "full"
    assert config_from_args(build_parser().parse_args(["--data", "x", "--decode", "full"])).decode == "full"
    with pytest.raises(ValueError, match="--decode"):
        TrainConfig(data="x", decode="fast")


def test_cosine_schedule_goes_from_lr_to_zero_by_the_last_step() -> None:
    from train.trainer import scheduled_lr

    cfg = TrainConfig(data="x", lr=0.2, lr_schedule="cosine")
    total = 40
    lrs = [scheduled_lr(cfg, step, total) for step in range(total + 1)]
    assert lrs[0] == pytest.approx(0.2) and lrs[total // 2] == pytest.approx(0.1) and lrs[total] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[10] == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert scheduled_lr(TrainConfig(data="x", lr=0.2, lr_schedule="constant"), 39, total) == 0.2


def test_cosine_schedule_resumes_exactly(synthetic_root, tmp_path) -> None:
    """Interrupted after epoch 1 and resumed: the learning rates per epoch equal an uninterrupted run's."""
    from tests.conftest import tiny_train_config
    from train.trainer import train

    def history(out, **overrides):
        train(tiny_train_config(synthetic_root, out, epochs=3, lr_schedule="cosine", max_steps_per_epoch=2,
                                **overrides))
        return [row["lr"] for row in json.loads((out / "history.json").read_text())]

    full = history(tmp_path / "full")
    assert len(history(tmp_path / "split", time_budget_s=1e-9)) == 1  # stops after its first epoch
    resumed = history(tmp_path / "split")
    assert resumed == pytest.approx(full)
    assert full[0] > full[1] > full[2]


def test_default_dcam_student_batchnorm_follows_its_fast_changing_weights() -> None:
    """Lite0's BatchNorm momentum 0.01 is TF's, for pretrained weights; the random-init student gets 0.1 by default."""
    from torch import nn

    from train.models import build_model

    def momenta(preset: str) -> tuple[set[float], set[float]]:
        model = build_model(ModelConfig(method="dcam", backbone="efficientnet_lite0", pretrained=False, preset=preset))
        def of(part: nn.Module) -> set[float]:
            return {m.momentum for m in part.modules() if isinstance(m, nn.BatchNorm2d)}

        return of(model.student), of(model.teacher)

    assert momenta("default") == ({0.1}, {0.01})
    assert momenta("paper") == ({0.01}, {0.01})
    with pytest.raises(ValueError, match="--student-bn-momentum"):
        ModelConfig(student_bn_momentum=0.0)


def test_methods_and_presets_come_from_the_registry() -> None:
    from train.models import METHOD_REGISTRY, MethodSpec, register_method
    assert METHODS == tuple(METHOD_REGISTRY) and set(METHODS) == {"stfpm", "dcam", "rd", "dskd", "mrkd", "knn"}
    for method, spec in METHOD_REGISTRY.items():
        assert spec.model_class().__name__ in spec.model  # every registered model module imports
        assert METHOD_PRESETS[method] == dict(spec.paper_model) and TRAIN_PRESETS[method] == dict(spec.paper_train)
    with pytest.raises(ValueError, match="registered twice"):
        register_method(MethodSpec(name="dcam", paper="", model="dcam.model:STFPMModel"))
    with pytest.raises(ValueError, match="--method: unknown method 'nope'; expected one of stfpm, dcam"):
        ModelConfig(method="nope")


def test_method_options_are_their_own_group_with_flags_and_old_flat_runs_migrate(tmp_path) -> None:
    from train.cli import build_parser, config_from_args
    from train.runs import load_config
    cfg = config_from_args(build_parser().parse_args(
        ["--data", "x", "--method", "dskd", "--rd-loss-mode", "flat", "--dskd-g", "0", "--no-mrkd-fmm"]))
    assert (cfg.model.rd.loss_mode, cfg.model.dskd.g, cfg.model.mrkd.fmm, cfg.model.knn.bank_size) == \
        ("flat", 0, False, 16384)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # saved and loaded as one group
    saved = cfg.to_dict()
    model = saved["model"]
    for group in ("rd", "dskd", "mrkd", "knn"):  # the layout runs were saved in before the registry
        model.update({f"{group}_{k}": v for k, v in model.pop(group).items()})
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert load_config(tmp_path) == cfg

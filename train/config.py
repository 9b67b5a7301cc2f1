"""Training configuration: dataclasses whose defaults follow the papers; CLI flags map 1:1 onto fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edge.preprocess import RESIZE_METHODS

METHODS = ("stfpm", "dcam", "rd", "dskd", "mrkd", "knn")
CORESETS = ("greedy", "random")
LR_SCHEDULES = ("constant", "cosine")
REVERSE_DISTILLATION_METHODS = ("rd", "dskd", "mrkd")
RD_LOSS_MODES = ("pixel", "flat")  # RD Eq. 2 per position | the official RD4AD code's flattened maps
STUDENT_LOSSES = ("pi", "ca")  # DSKD Table 5: per-pixel cosine | contextual affinity
ATTENTIONS = ("none", "channel", "spatial", "both")

PRESETS = ("default", "paper")

# Paper presets fill every field left as None (DCAM paper Table 6 best row; STFPM = Table 1 baseline).
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "stfpm": dict(attention="none", loss_mse=1.0, loss_channel_cosine=0.0, loss_spatial_cosine=0.0,
                  loss_channel_kl=0.0, loss_spatial_kl=0.0),
    "dcam": dict(attention="channel", loss_mse=0.0, loss_channel_cosine=1.0, loss_spatial_cosine=0.0,
                 loss_channel_kl=0.0, loss_spatial_kl=0.5),
    # Reverse-distillation family: RD, DSKD and masked RD smooth the map with a Gaussian σ = 4 before the max.
    "rd": dict(blur_sigma=4.0),
    "dskd": dict(blur_sigma=4.0),
    "mrkd": dict(blur_sigma=4.0),
    "knn": dict(blur_sigma=4.0, levels=(1, 2)),  # PatchCore: strides 8 + 16, map smoothed with σ = 4
}
# The "default" preset: the paper's values, overridden where real-image measurements (bench-quality, README
# "Measured quality") found better ones at the 20-epoch CPU budget. `--preset paper` gives the paper exactly.
MEASURED_METHOD_PRESETS: dict[str, dict[str, Any]] = {
    method: dict(student_bn_momentum=0.1, blur_sigma=4.0, levels=(1, 2)) for method in ("stfpm", "dcam")
}


def method_preset(method: str, preset: str) -> dict[str, Any]:
    """The model fields a method's preset fills (paper values, plus the measured overrides for "default")."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    values = dict(METHOD_PRESETS.get(method, {}))
    if preset == "default":
        values.update(MEASURED_METHOD_PRESETS.get(method, {}))
    return values


@dataclass
class ModelConfig:
    """What to build. Loss weights / attention left as None take the method's preset."""

    method: str = "dcam"
    preset: str = "default"  # "default": the best measured recipe; "paper": the method's paper exactly
    backbone: str = "resnet18"
    # Teacher feature levels that are distilled and scored (0 = stride 4, 1 = stride 8, 2 = stride 16).
    levels: tuple[int, ...] | None = None
    pretrained: bool = True
    teacher_weights: str | None = None
    # DCAM (paper §3.1): training-only CBAM-style attention on the student's three feature maps.
    attention: str | None = None
    attention_reduction: int = 16  # CBAM's MLP reduction ratio r
    attention_kernel: int = 7  # spatial attention conv, paper: 7×7
    attention_at_inference: bool = False  # the paper drops it; keep it to measure that choice
    # BatchNorm momentum of a random-init student (None = the backbone's own: Lite0 keeps TF's 0.01, whose running
    # statistics lag far behind a student that changes fast in a short training; measured: see MEASURED_METHOD_PRESETS).
    student_bn_momentum: float | None = None
    # Teacher levels the student shares (frozen) instead of computing them: 0 = a whole student (the papers);
    # 1 = the student maps the teacher's stride-4 features to strides 8 and 16 (fewer layers to learn).
    student_shared_levels: int | None = None
    # Feature-matching loss weights (paper §3.2–3.3 and STFPM's L2-normalised MSE).
    loss_channel_cosine: float | None = None
    loss_spatial_cosine: float | None = None
    loss_channel_kl: float | None = None
    loss_spatial_kl: float | None = None
    loss_mse: float | None = None
    # The KL equations sum over positions (Eq. 5) / channels (Eq. 6) while CD averages; summed, the λ=0.5 KL term
    # is ~500× the CD term and SGD at lr 0.1 diverges (measured: image AUROC 0.55 vs 0.90), so "mean" by default.
    kl_reduction: str = "mean"
    # Inference head: Gaussian blur σ before the image max (0 = off; None = method preset: RD family 4, else 0).
    blur_sigma: float | None = None
    # --- reverse-distillation family (rd / dskd / mrkd) fields: below this line ---
    # RD (Deng & Li 2022): "pixel" = Eq. 2, mean over positions of 1 − cos along C; "flat" = the official
    # RD4AD code, 1 − cos of each level's flattened C·h·w map. Used by rd, mrkd and DSKD's "pi" students.
    rd_loss_mode: str = "pixel"
    # Residual blocks of the one-class bottleneck's stride-2 stage; 0 = RD's count (3 Bottleneck / 2 BasicBlock).
    rd_bottleneck_layers: int = 0
    # DSKD: GCCB channels g (Table 6; 0 = no GCCB, "w/o"; g equal to the bottleneck width = no 1×1 convs).
    dskd_g: int = 1024
    dskd_temperature: float = 1.0  # T of the contextual affinity, Eq. 4 and 6 (paper: 1)
    dskd_local_loss: str = "pi"  # "pi" per-pixel cosine (Eq. 2) | "ca" contextual affinity (Eq. 7); Table 5
    dskd_global_loss: str = "ca"
    # Masked RD: feature-mask module (FMM, §3.7) and SCSAtt parts (Tables 5–6 ablations).
    mrkd_fmm: bool = True
    mrkd_mask_rate: float = 0.2  # λ, share of masked positions (not in the paper; Jiang et al.'s MRKD code: 0.2)
    mrkd_fmm_weight: float = 1.0  # weight of the FMM term next to the direct decoder term
    mrkd_scconv: bool = True
    mrkd_simam: bool = True
    # Memory bank (knn, PatchCore): p×p local averaging, bank entries, how they are selected.
    knn_neighbourhood: int = 3
    knn_bank_size: int = 16384
    knn_coreset: str = "greedy"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--method: unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        for key, value in method_preset(self.method, self.preset).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.blur_sigma is None:
            self.blur_sigma = 0.0
        if self.levels is None:
            self.levels = (0, 1, 2)
        self.levels = tuple(int(i) for i in self.levels)  # JSON configs give a list
        if not self.levels or sorted(set(self.levels)) != list(self.levels) or not set(self.levels) <= {0, 1, 2}:
            raise ValueError(f"--levels: expected increasing distinct teacher levels from 0 (stride 4), 1 (stride 8), "
                             f"2 (stride 16), got {list(self.levels)}")
        if self.method in REVERSE_DISTILLATION_METHODS and self.levels != (0, 1, 2):
            raise ValueError(f"--levels: {self.method} reconstructs all three teacher levels; expected 0 1 2")
        self._check_reverse_distillation_fields()
        if self.attention is None:
            self.attention = "none"
        if self.attention not in ATTENTIONS:
            raise ValueError(f"--attention: expected one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.kl_reduction not in ("sum", "mean"):
            raise ValueError(f"--kl-reduction: expected 'sum' or 'mean', got {self.kl_reduction!r}")
        for name in ("loss_channel_cosine", "loss_spatial_cosine", "loss_channel_kl", "loss_spatial_kl", "loss_mse"):
            if getattr(self, name) is None:
                setattr(self, name, 0.0)
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: a loss weight must be >= 0")
        if self.blur_sigma < 0:
            raise ValueError("--blur-sigma must be >= 0")
        if self.student_shared_levels is None:
            self.student_shared_levels = 0
        if not 0 <= self.student_shared_levels <= 2 or min(self.levels) < self.student_shared_levels:
            raise ValueError(f"--student-shared-levels: expected 0 .. {min(self.levels)} (a shared level is not "
                             f"distilled; --levels {' '.join(map(str, self.levels))}), got {self.student_shared_levels}")
        if self.student_bn_momentum is not None and not 0 < self.student_bn_momentum <= 1:
            raise ValueError(f"--student-bn-momentum: expected a value in (0, 1], got {self.student_bn_momentum}")

    def _check_reverse_distillation_fields(self) -> None:
        checks = [
            (self.rd_loss_mode in RD_LOSS_MODES,
             f"--rd-loss-mode: expected one of {', '.join(RD_LOSS_MODES)}, got {self.rd_loss_mode!r}"),
            (self.rd_bottleneck_layers >= 0,
             f"--rd-bottleneck-layers: expected >= 0 (0 = RD's count), got {self.rd_bottleneck_layers}"),
            (self.dskd_g >= 0, f"--dskd-g: expected >= 0 (0 = no GCCB), got {self.dskd_g}"),
            (self.dskd_temperature > 0, f"--dskd-temperature: expected > 0, got {self.dskd_temperature}"),
            (self.dskd_local_loss in STUDENT_LOSSES,
             f"--dskd-local-loss: expected one of {', '.join(STUDENT_LOSSES)}, got {self.dskd_local_loss!r}"),
            (self.dskd_global_loss in STUDENT_LOSSES,
             f"--dskd-global-loss: expected one of {', '.join(STUDENT_LOSSES)}, got {self.dskd_global_loss!r}"),
            (0.0 <= self.mrkd_mask_rate < 1.0, f"--mrkd-mask-rate: expected a value in [0, 1), got {self.mrkd_mask_rate}"),
            (self.mrkd_fmm_weight >= 0, f"--mrkd-fmm-weight: expected >= 0, got {self.mrkd_fmm_weight}"),
            (self.knn_neighbourhood >= 1 and self.knn_neighbourhood % 2 == 1,
             f"--knn-neighbourhood: expected an odd size >= 1, got {self.knn_neighbourhood}"),
            (self.knn_bank_size >= 1, f"--knn-bank-size: expected >= 1, got {self.knn_bank_size}"),
            (self.knn_coreset in CORESETS,
             f"--knn-coreset: expected one of {', '.join(CORESETS)}, got {self.knn_coreset!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


# Optimiser / schedule defaults per method: DCAM §4.2 (SGD lr 0.1, 400 epochs, batch 32; STFPM uses DCAM's
# settings for a fair comparison), RD (Deng & Li 2022: Adam lr 0.005, betas (0.5, 0.999), 200 epochs, batch 16),
# DSKD follows RD, masked RD §4.2 (Adam lr 1e-3).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "stfpm": dict(optimizer="sgd", lr=0.1, epochs=400, batch_size=32),
    "dcam": dict(optimizer="sgd", lr=0.1, epochs=400, batch_size=32),
    "rd": dict(optimizer="adam", lr=0.005, epochs=200, batch_size=16),
    "dskd": dict(optimizer="adam", lr=0.005, epochs=200, batch_size=16),
    # Masked RD §4.2: Adam lr 1e-3 (its L2 regularisation has no stated coefficient: none here).
    "mrkd": dict(optimizer="adam", lr=0.001, epochs=200, batch_size=16),
    # knn is fitted in one pass, not trained: epochs / optimizer are unused.
    "knn": dict(optimizer="adam", lr=0.001, epochs=1, batch_size=16),
}
MEASURED_TRAIN_PRESETS: dict[str, dict[str, Any]] = {}


def train_preset(method: str, preset: str) -> dict[str, Any]:
    """Optimiser / schedule preset of a method (paper values, plus the measured overrides for "default")."""
    values = dict(lr_schedule="constant", **TRAIN_PRESETS.get(method, TRAIN_PRESETS["dcam"]))
    if preset == "default":
        values.update(MEASURED_TRAIN_PRESETS.get(method, {}))
    return values


# Learning rate when only --optimizer is overridden: that optimizer's paper default (DCAM for SGD, RD for Adam).
TRAIN_PRESETS_BY_OPTIMIZER = {p["optimizer"]: p["lr"] for p in (TRAIN_PRESETS["dcam"], TRAIN_PRESETS["rd"])}


@dataclass
class TrainConfig:
    """How to train. Defaults: DCAM paper §4.2 (SGD lr 0.1, 400 epochs, batch 32, 256×256); momentum and
    weight decay as STFPM (0.9, 1e-4); 80/20 train/validation split of train/good (§4.3)."""

    data: str = ""
    categories: str = "all"
    out: str = "runs/dcam"
    epochs: int | None = None  # None = the method's paper default (TRAIN_PRESETS)
    batch_size: int | None = None
    # None = the method's paper default (TRAIN_PRESETS): SGD lr 0.1 for stfpm/dcam, Adam lr 0.005 for the RD family.
    optimizer: str | None = None
    lr: float | None = None
    # "constant" (the papers) or "cosine": lr·½(1 + cos(π·step/total steps)), set per step (resumes exactly).
    lr_schedule: str | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    adam_betas: tuple[float, float] = (0.5, 0.999)
    image_size: int = 256
    # Downscaling: "area" antialiases (cv2.INTER_AREA), "linear" is plain bilinear (runs saved before this field).
    resize: str = "area"
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on CUDA if supported else fp16; "off" disables
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 2
    cache_images: bool = False
    max_steps_per_epoch: int = 0  # 0 = full epoch; >0 caps steps (smoke tests, time-boxed demos)
    time_budget_s: float = 0.0  # 0 = no limit; stop after the epoch that crosses it (keeps best checkpoint)
    resume: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        preset = train_preset(self.model.method, self.model.preset)
        for key in ("epochs", "batch_size", "lr_schedule"):
            if getattr(self, key) is None:
                setattr(self, key, preset[key])
        if self.optimizer is None:
            self.optimizer = preset["optimizer"]
        if self.lr is None:
            self.lr = preset["lr"] if self.optimizer == preset["optimizer"] else TRAIN_PRESETS_BY_OPTIMIZER.get(self.optimizer, 0.1)
        self.adam_betas = tuple(self.adam_betas)
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"--resize: expected one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}")
        if self.image_size % 32:
            raise ValueError(f"--image-size: expected a multiple of 32, got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction: expected a value in (0, 1), got {self.val_fraction}")
        if self.lr <= 0:
            raise ValueError(f"--lr: expected a positive learning rate, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"--optimizer: expected 'sgd' or 'adam', got {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        model_fields = dict(d.pop("model", {}))
        # Runs saved before presets existed were trained with the papers' recipe: fields they lack keep its values.
        model_fields.setdefault("preset", "paper")
        d.setdefault("lr_schedule", "constant")
        d.setdefault("resize", "linear")
        model = ModelConfig(**model_fields)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(model=model, **{k: v for k, v in d.items() if k in known})

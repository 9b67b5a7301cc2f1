"""Training configuration: dataclasses whose defaults follow the papers; CLI flags and TOML keys map 1:1 onto
fields (edge.cliconfig; a method's option group ModelConfig.rd ↔ ``--rd-*`` ↔ ``[model.rd]``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from edge.cliconfig import group, group_types
from edge.preprocess import DECODES, FITS, RESIZE_METHODS, PreprocessSpec

from .augment import AUGMENTATIONS
from .models import METHOD_REGISTRY, METHODS, method_spec  # noqa: F401  (METHODS re-exported)
from .models.dcam.config import ATTENTION_PLACEMENTS, LEVEL_FUSIONS, MSE_MODES
from .models.dskd import DSKDOptions
from .models.knn import KNNOptions
from .models.mrkd import MRKDOptions
from .models.rd import RDOptions

LR_SCHEDULES = ("constant", "cosine")
ATTENTIONS = ("none", "channel", "spatial", "both")
PRESETS = ("default", "paper")
LOSS_WEIGHTS = ("loss_channel_cosine", "loss_spatial_cosine", "loss_channel_kl", "loss_spatial_kl", "loss_mse")

# The default of every field a preset fills: None while the dataclass is constructed ("take the method's preset"),
# replaced in __post_init__ by the preset's value (else _UNSET_MODEL's), so after construction the field always holds
# its declared type and config.json saves the resolved value. Typed Any so that the annotations can say that type.
FROM_PRESET: Any = None

# What a ModelConfig field left unset takes when the method's preset does not set it either.
_UNSET_MODEL: dict[str, Any] = {"backbone": "resnet18", "blur_sigma": 0.0, "levels": (0, 1, 2), "attention": "none",
                                **{name: 0.0 for name in LOSS_WEIGHTS}, "student_shared_levels": 0,
                                "feature_neighbourhood": 1, "loss_hard_quantile": 0.0,
                                "level_normalize": False, "level_scale": (1.0, 1.0, 1.0), "level_fusion": "sum"}

# Paper presets fill every field left as None; the "default" preset adds the overrides real-image measurements
# (bench-quality, README "Measured quality") found better at the 20-epoch CPU budget. Both live in each method's
# MethodSpec (train/models/<method>/config.py); these views are read by the configuration and the tests.
METHOD_PRESETS: dict[str, dict[str, Any]] = {m: dict(s.paper_model) for m, s in METHOD_REGISTRY.items()}


def method_preset(method: str, preset: str) -> dict[str, Any]:
    """The model fields a method's preset fills (paper values, plus the measured overrides for "default")."""
    if preset not in PRESETS:
        raise ValueError(f"--preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    spec = method_spec(method)
    values = dict(spec.paper_model)
    if preset == "default":
        values.update(spec.measured_model)
    return values


@dataclass
class ModelConfig:
    """What to build. Fields defaulting to FROM_PRESET (loss weights, attention, ...) take the method's preset."""

    method: str = "dcam"
    preset: str = "default"  # "default": the best measured recipe; "paper": the method's paper exactly
    backbone: str = FROM_PRESET  # unset = the method's paper teacher: ResNet-18 (stfpm, dcam, knn), WRN-50 (RD family)
    # Teacher feature levels that are distilled and scored (0 = stride 4, 1 = stride 8, 2 = stride 16).
    levels: tuple[int, ...] = FROM_PRESET
    pretrained: bool = True
    teacher_weights: str | None = None
    # DCAM (paper §3.1): training-only CBAM-style attention on the student's three feature maps.
    attention: str = FROM_PRESET
    attention_reduction: int = 16  # CBAM's MLP reduction ratio r
    attention_kernel: int = 7  # spatial attention conv, paper: 7×7
    attention_at_inference: bool = False  # the paper drops it; keep it to measure that choice
    # "branch": the blocks refine the tapped maps on the side; "inline": inserted into the student's forward after
    # each stage, so the refined map feeds the next stage (CBAM's use). Branch + a per-position normalised loss
    # gives a spatial attention zero gradient (its scale cancels), see train/models/dcam/README.md.
    attention_placement: str = "branch"
    # BatchNorm momentum of a random-init student (None = the backbone's own: Lite0 keeps TF's 0.01, whose running
    # statistics lag far behind a student that changes fast in a short training; measured: see
    # train/models/dcam/config.py).
    student_bn_momentum: float | None = None
    # Forward distillation: the random-init student's architecture (None = the teacher's). A larger teacher with a
    # smaller student of the same tap channels (efficientnet_lite1 → efficientnet_lite0) keeps the graph edge-sized.
    student_backbone: str | None = None
    # Teacher levels the student shares (frozen) instead of computing them: 0 = a whole student (the papers);
    # 1 = the student maps the teacher's stride-4 features to strides 8 and 16 (fewer layers to learn).
    student_shared_levels: int = FROM_PRESET
    # Forward distillation (stfpm/dcam): what teacher and student maps are compared as. Standardise each channel by
    # the teacher's mean/std over the training normals (else a few large channels decide the cosine); average over
    # a p×p neighbourhood (PatchCore's local aggregation, so the student predicts what is predictable in a texture).
    feature_standardize: bool = FROM_PRESET
    feature_neighbourhood: int = FROM_PRESET
    # Hard feature loss (EfficientAD §3.2): only positions whose distance is above this quantile of the batch's
    # distances count in the channel-cosine / MSE terms (0 = every position, the papers' mean).
    loss_hard_quantile: float = FROM_PRESET
    # Denoising student (DeSTSeg §3.2): this fraction of the training images reaches the student with a synthetic
    # anomaly pasted in, and is held to the teacher's features of the clean image (train/anomaly_synthesis.py).
    student_denoise: float = 0.0
    # Feature-matching loss weights (paper §3.2–3.3 and STFPM's L2-normalised MSE).
    loss_channel_cosine: float = FROM_PRESET
    loss_spatial_cosine: float = FROM_PRESET
    loss_channel_kl: float = FROM_PRESET
    loss_spatial_kl: float = FROM_PRESET
    loss_mse: float = FROM_PRESET
    # The MSE term: "normalized" (STFPM Eq. 1, unit vectors along channels) or "raw" (plain feature MSE).
    loss_mse_mode: str = "normalized"
    # The KL equations sum over positions (Eq. 5) / channels (Eq. 6) while CD averages; summed, the λ=0.5 KL term
    # is ~500× the CD term and SGD at lr 0.1 diverges (measured: image AUROC 0.55 vs 0.90), so "mean" by default.
    kl_reduction: str = "mean"
    # Inference head: weight each level's map by 1 / its normal spread on the validation images (EfficientAD §3.4).
    level_normalize: bool = FROM_PRESET
    # With level_normalize: a factor on each teacher level's normalised map (stride 4, 8, 16; unscored levels are
    # ignored). The dcam default halves stride 8: after 20+ epochs its low-level features are imitated on defects
    # too (bench/results/quality-round9-levels-zen3.md).
    level_scale: tuple[float, float, float] = FROM_PRESET
    # How stfpm/dcam combine the upsampled level maps: "sum" (DCAM §4.3) or "product" (STFPM's paper).
    level_fusion: str = FROM_PRESET
    # Inference head: Gaussian blur σ before the image max (0 = off; unset = method preset: RD family 4, else 0).
    blur_sigma: float = FROM_PRESET
    # Each method's own options (train/models/<method>/config.py); the RD family (rd, dskd, mrkd) reads `rd`.
    rd: RDOptions = group(RDOptions, prefix="rd")
    dskd: DSKDOptions = group(DSKDOptions, prefix="dskd")
    mrkd: MRKDOptions = group(MRKDOptions, prefix="mrkd")
    knn: KNNOptions = group(KNNOptions, prefix="knn")

    def __post_init__(self) -> None:
        method_spec(self.method)  # an unknown --method fails here, with the list of known ones
        self._build_option_groups()
        level_scale_given = self.level_scale is not None
        self._resolve_unset()
        self._check_levels()
        self._check_choices()
        self._check_loss_weights()
        self._check_student_shared_levels()
        self._check_feature_matching()
        self._check_level_scale(level_scale_given)
        self._check_student_bn_momentum()

    def _build_option_groups(self) -> None:
        """Method option groups read from JSON / TOML arrive as dicts."""
        for name, cls in METHOD_OPTIONS.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))

    def _resolve_unset(self) -> None:
        """Unset fields take the method preset's value, else the _UNSET_MODEL fallback."""
        for values in (method_preset(self.method, self.preset), _UNSET_MODEL):
            for key, value in values.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        self.levels = tuple(int(i) for i in self.levels)  # JSON configs give a list
        self.feature_standardize = bool(self.feature_standardize)
        self.level_normalize = bool(self.level_normalize)
        self.level_scale = tuple(float(x) for x in self.level_scale)  # type: ignore[assignment]  # JSON: a list

    def _check_levels(self) -> None:
        if not self.levels or sorted(set(self.levels)) != list(self.levels) or not set(self.levels) <= {0, 1, 2}:
            raise ValueError(f"--levels: expected increasing distinct teacher levels from 0 (stride 4), 1 (stride 8), "
                             f"2 (stride 16), got {list(self.levels)}")
        if method_spec(self.method).needs_all_levels and self.levels != (0, 1, 2):
            raise ValueError(f"--levels: {self.method} reconstructs all three teacher levels; expected 0 1 2")

    def _check_choices(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"--attention: expected one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.attention_placement not in ATTENTION_PLACEMENTS:
            raise ValueError(f"--attention-placement: expected one of {', '.join(ATTENTION_PLACEMENTS)}, "
                             f"got {self.attention_placement!r}")
        if self.level_fusion not in LEVEL_FUSIONS:
            raise ValueError(f"--level-fusion: expected one of {', '.join(LEVEL_FUSIONS)}, got {self.level_fusion!r}")
        if self.loss_mse_mode not in MSE_MODES:
            raise ValueError(f"--loss-mse-mode: expected one of {', '.join(MSE_MODES)}, got {self.loss_mse_mode!r}")
        if self.kl_reduction not in ("sum", "mean"):
            raise ValueError(f"--kl-reduction: expected 'sum' or 'mean', got {self.kl_reduction!r}")

    def _check_loss_weights(self) -> None:
        for name in LOSS_WEIGHTS:
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')}: a loss weight must be >= 0")
        if self.blur_sigma < 0:
            raise ValueError("--blur-sigma must be >= 0")

    def _check_student_shared_levels(self) -> None:
        if not 0 <= self.student_shared_levels <= 2 or min(self.levels) < self.student_shared_levels:
            raise ValueError(f"--student-shared-levels: expected 0 .. {min(self.levels)} (a shared level is not "
                             f"distilled; --levels {' '.join(map(str, self.levels))}), "
                             f"got {self.student_shared_levels}")

    @property
    def scored_level_scale(self) -> list[float]:
        """--level-scale's factors of the scored --levels, in their order (what the head's weights multiply)."""
        return [self.level_scale[i] for i in self.levels]

    def _check_level_scale(self, given: bool) -> None:
        scored = self.scored_level_scale if len(self.level_scale) == 3 else []
        if not scored or min(self.level_scale) < 0 or max(scored) <= 0:
            raise ValueError(f"--level-scale: expected three factors >= 0 (stride 4, 8, 16), one > 0 among the "
                             f"scored --levels {' '.join(map(str, self.levels))}, got {list(self.level_scale)}")
        if not self.level_normalize and set(self.level_scale) != {1.0}:
            if given:
                raise ValueError("--level-scale: scales the normalised level maps; it needs --level-normalize")
            self.level_scale = (1.0, 1.0, 1.0)  # the preset's scale has nothing to act on: save what is used

    def _check_feature_matching(self) -> None:
        if self.feature_neighbourhood < 1 or self.feature_neighbourhood % 2 == 0:
            raise ValueError(f"--feature-neighbourhood: expected an odd size >= 1, got {self.feature_neighbourhood}")
        if not 0.0 <= self.loss_hard_quantile < 1.0:
            raise ValueError(f"--loss-hard-quantile: expected a value in [0, 1), got {self.loss_hard_quantile}")
        if not 0.0 <= self.student_denoise <= 1.0:
            raise ValueError(f"--student-denoise: expected a fraction of images in [0, 1], got {self.student_denoise}")
        if self.student_denoise and method_spec(self.method).model != method_spec("dcam").model:
            raise ValueError(f"--student-denoise: only stfpm and dcam distil forward into a student "
                             f"(--method {self.method})")

    def _check_student_bn_momentum(self) -> None:
        if self.student_bn_momentum is not None and not 0 < self.student_bn_momentum <= 1:
            raise ValueError(f"--student-bn-momentum: expected a value in (0, 1], got {self.student_bn_momentum}")


# ModelConfig fields holding a method's own option dataclass: CLI flags --<field>-<option>, TOML [model.<field>].
METHOD_OPTIONS: dict[str, type] = group_types(ModelConfig)


# Optimiser / schedule defaults per method (each MethodSpec's paper_train; measured overrides in measured_train).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {m: dict(s.paper_train) for m, s in METHOD_REGISTRY.items()}


def train_preset(method: str, preset: str) -> dict[str, Any]:
    """Optimiser / schedule preset of a method (paper values, plus the measured overrides for "default")."""
    spec = method_spec(method)
    values = {"lr_schedule": "constant", "weight_decay": 0.0, **spec.paper_train}
    if preset == "default":
        values.update(spec.measured_train)
    return values


# Learning rate when only --optimizer is overridden: that optimizer's paper default (DCAM for SGD, RD for Adam).
TRAIN_PRESETS_BY_OPTIMIZER = {p["optimizer"]: p["lr"] for p in (TRAIN_PRESETS["dcam"], TRAIN_PRESETS["rd"])}


def nest_method_options(model_fields: dict[str, Any]) -> dict[str, Any]:
    """Runs saved before the method registry kept method options flat (rd_loss_mode): move them into their group."""
    out = {k: v for k, v in model_fields.items()}
    for name in METHOD_OPTIONS:
        flat = {k[len(name) + 1:]: out.pop(k) for k in list(out) if k.startswith(name + "_")}
        if flat:
            out[name] = {**flat, **dict(out.get(name) or {})}
    return out


@dataclass
class TrainConfig:
    """How to train. Defaults: DCAM paper §4.2 (SGD lr 0.1, 400 epochs, batch 32, 256×256); momentum and
    weight decay as STFPM (0.9, 1e-4); 80/20 train/validation split of train/good (§4.3)."""

    data: str = ""
    categories: str = "all"
    out: str = "runs/dcam"
    epochs: int = FROM_PRESET  # unset = the method's paper default (TRAIN_PRESETS)
    batch_size: int = FROM_PRESET
    # Unset = the method's paper default (TRAIN_PRESETS): SGD lr 0.1 for stfpm/dcam, Adam lr 0.005 for the RD family.
    optimizer: str = FROM_PRESET
    lr: float = FROM_PRESET
    # "constant" (the papers) or "cosine": lr·½(1 + cos(π·step/total steps)), set per step (resumes exactly).
    lr_schedule: str = FROM_PRESET
    momentum: float = 0.9
    # Clip the global gradient L2 norm to this (0 = off): --kl-reduction sum makes the KL terms ~HW× larger.
    grad_clip_norm: float = 0.0
    # L2 regularisation for SGD and Adam; unset = the method's paper value (STFPM 1e-4; RD family: none stated, 0).
    weight_decay: float = FROM_PRESET
    adam_betas: tuple[float, float] = (0.5, 0.999)
    image_size: int = 256
    # Downscaling (edge.preprocess.RESIZE_METHODS): "area" and "pyramid" antialias, "linear" is plain bilinear
    # (runs saved before this field).
    resize: str = PreprocessSpec.resize
    # Non-square images: "stretch" (squash), "letterbox" (pad to square) or "center-crop" (edge.preprocess.FITS).
    fit: str = "stretch"
    # Image files: "reduced" decodes a large JPEG at 1/2–1/8 size when that still covers the input, "full" every
    # pixel (edge.preprocess.DECODES; runs saved before this field).
    decode: str = PreprocessSpec.decode
    # Training normals flipped ("flip"), flipped and turned ("dihedral") or re-lit ("photometric"); train/augment.py.
    augment: str = "none"
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on CUDA if supported else fp16; "off" disables
    # NHWC activations: oneDNN's CPU convolutions and CUDA tensor cores both prefer them (Lite0 CPU step 1.6x faster).
    channels_last: bool = True
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
        self._resolve_unset()
        if len(self.adam_betas) != 2:
            raise ValueError(f"--adam-betas: expected two values, got {list(self.adam_betas)}")
        self.adam_betas = (self.adam_betas[0], self.adam_betas[1])  # JSON configs give a list
        self._check_sizes()
        self._check_optimization()

    def _resolve_unset(self) -> None:
        """Unset fields take the method's training preset; an overridden --optimizer brings its own paper lr."""
        preset = train_preset(self.model.method, self.model.preset)
        for key in ("epochs", "batch_size", "lr_schedule", "optimizer", "weight_decay"):
            if getattr(self, key) is None:
                setattr(self, key, preset[key])
        if self.lr is None:
            same_optimizer = self.optimizer == preset["optimizer"]
            self.lr = preset["lr"] if same_optimizer else TRAIN_PRESETS_BY_OPTIMIZER.get(self.optimizer, 0.1)

    def _check_sizes(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(self, name)}")
        if self.resize not in RESIZE_METHODS:
            raise ValueError(f"--resize: expected one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}")
        if self.image_size % 32:
            raise ValueError(f"--image-size: expected a multiple of 32, got {self.image_size}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"--augment: expected one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.fit not in FITS:
            raise ValueError(f"--fit: expected one of {', '.join(FITS)}, got {self.fit!r}")
        if self.decode not in DECODES:
            raise ValueError(f"--decode: expected one of {', '.join(DECODES)}, got {self.decode!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction: expected a value in (0, 1), got {self.val_fraction}")

    def _check_optimization(self) -> None:
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay: expected >= 0, got {self.weight_decay}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"--grad-clip-norm: expected a norm >= 0 (0 = off), got {self.grad_clip_norm}")
        if self.lr <= 0:
            raise ValueError(f"--lr: expected a positive learning rate, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule: expected one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"--optimizer: expected 'sgd' or 'adam', got {self.optimizer!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        model_fields = dict(d.pop("model", {}))
        # Runs saved before presets existed were trained with the papers' recipe: fields they lack keep its values.
        model_fields.setdefault("preset", "paper")
        model_fields.setdefault("level_fusion", "sum")  # every run before --level-fusion summed the levels
        model_fields.setdefault("level_normalize", False)  # ... and weighted them equally (no level_weights buffer)
        model_fields.setdefault("level_scale", (1.0, 1.0, 1.0))  # ... and normalised levels at equal scale
        d.setdefault("lr_schedule", "constant")
        d.setdefault("resize", "linear")
        d.setdefault("decode", "full")
        d.setdefault("weight_decay", 1e-4)  # saved before it was a preset: the old fixed default (Adam ignored it)
        model = ModelConfig(**nest_method_options(model_fields))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(model=model, **{k: v for k, v in d.items() if k in known})

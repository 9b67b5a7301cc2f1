"""Presets of forward distillation: STFPM (Wang et al. 2021) and DCAM (Jena et al., "Attend, Distill, Detect").

Their options are ModelConfig's forward-distillation fields (attention, loss weights, student_*, feature_*),
shared by both methods; STFPM is DCAM's baseline (DCAM Table 1): no attention, STFPM's L2-normalised MSE.
"""
from __future__ import annotations

from ..registry import MethodSpec

ATTENTION_PLACEMENTS = ("branch", "inline")  # --attention-placement (attention.DistributedAttention)
LEVEL_FUSIONS = ("sum", "product")  # --level-fusion: Σ_k (DCAM §4.3) or Π_k (STFPM) of the upsampled level maps
MSE_MODES = ("normalized", "raw")  # --loss-mse-mode: STFPM's unit-vector MSE, or plain feature MSE (loss.py)

# DCAM §4.2: SGD lr 0.1, 400 epochs, batch 32; STFPM is trained with DCAM's settings for a fair comparison.
PAPER_TRAIN = dict(optimizer="sgd", lr=0.1, epochs=400, batch_size=32, weight_decay=1e-4)  # wd: STFPM's
# Real-image measurements (bench-quality, README "Measured quality"; MTD + photoset, 6 epochs, Lite0): student
# BatchNorm momentum 0.1, strides 8 + 16, σ = 4 for both; both the hard feature loss (q 0.99: DCAM image AUROC
# +0.08 MTD, +0.12 photoset; STFPM +0.11 photoset).
# STFPM's own product fusion measured below the sum (paired, same student: image / pixel AUROC 0.709 / 0.917 vs
# 0.714 / 0.922, photoset 6 epochs), so the default sums for both; STFPM's paper preset multiplies.
MEASURED_MODEL = dict(student_bn_momentum=0.1, blur_sigma=4.0, levels=(1, 2), level_fusion="sum")
# Round 3, paired (the same trained student scored both ways; MTD + photoset4, 6 epochs): level-normalised maps
# (EfficientAD §3.4) +0.003 / +0.001 MTD, +0.005 / +0.003 photoset; σ 6 instead of 4 +0.004 / +0.006 MTD,
# −0.004 / +0.005 photoset (image / pixel AUROC). Both are constants of the exported head: no latency cost.
# Round 9, paired (bench/results/quality-round9-levels-zen3.md): the stride-8 map at half its normalised weight,
# photoset7 20 epochs +0.017 / +0.006, 40 epochs +0.029 / +0.003, MTD 15 epochs −0.004 / +0.001; at 6 epochs, where
# the stride-8 level still carries defects, −0.002 … −0.010.
DCAM_MEASURED_MODEL = dict(MEASURED_MODEL, loss_hard_quantile=0.99, level_normalize=True, blur_sigma=6.0,
                           level_scale=(1.0, 0.5, 1.0))

# STFPM with the hard loss on its normalised MSE (photoset4, 6 epochs): 0.826 / 0.906 vs 0.714 / 0.922.
STFPM = MethodSpec(name="stfpm", paper="Wang et al., BMVC 2021 (STFPM)", model="dcam.model:STFPMModel",
                   paper_model=dict(attention="none", level_fusion="product", loss_mse=1.0, loss_channel_cosine=0.0,
                                    loss_spatial_cosine=0.0, loss_channel_kl=0.0, loss_spatial_kl=0.0),
                   paper_train=PAPER_TRAIN, measured_model=dict(MEASURED_MODEL, loss_hard_quantile=0.99))
# DCAM Table 6, best row: channel attention, 1·CD_channel + 0.5·KLD_spatial.
DCAM = MethodSpec(name="dcam", paper="Jena et al., Attend, Distill, Detect (DCAM)", model="dcam.model:STFPMModel",
                  paper_model=dict(attention="channel", loss_mse=0.0, loss_channel_cosine=1.0, loss_spatial_cosine=0.0,
                                   loss_channel_kl=0.0, loss_spatial_kl=0.5),
                  paper_train=PAPER_TRAIN, measured_model=DCAM_MEASURED_MODEL)

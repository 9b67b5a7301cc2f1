"""Training-time augmentation of normal images: the symmetries under which a part's normal appearance stays normal.

A student that sees each training normal in one orientation only learns it there; on stochastic textures (grass,
tissue, gravel) a test normal is a new arrangement of the same structure, and the student's error on it is what a
false alarm is made of. Flips and quarter turns give the student more of that structure per image at no cost.
"""
from __future__ import annotations

import torch

# "none": as recorded; "flip": random horizontal and vertical flips; "dihedral": flips and quarter turns (the
# 8 symmetries of the square; a square input, which every image here is after preprocessing).
AUGMENTATIONS = ("none", "flip", "dihedral")


def augment_generator(seed: int, rank: int, epoch: int, step: int) -> torch.Generator:
    """A generator fixed by where the batch is in training, so a resumed run draws the same augmentations."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 10_007 + epoch) * 1_000_003 + step)


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator) -> torch.Tensor:
    """B×C×H×W → the same batch with each image flipped / turned at random (``mode`` in AUGMENTATIONS)."""
    if mode == "none":
        return images
    if mode not in AUGMENTATIONS:
        raise ValueError(f"--augment: expected one of {', '.join(AUGMENTATIONS)}, got {mode!r}")
    draws = torch.randint(0, 2, (images.shape[0], 3), generator=generator)
    out = []
    for image, (flip_h, flip_v, turn) in zip(images, draws.tolist()):
        if flip_h:
            image = image.flip(-1)
        if flip_v:
            image = image.flip(-2)
        if turn and mode == "dihedral":
            image = image.rot90(1, (-2, -1))
        out.append(image)
    return torch.stack(out)

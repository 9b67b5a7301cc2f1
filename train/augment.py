"""Training-time augmentation of normal images: the symmetries under which a part's normal appearance stays normal.

A student that sees each training normal in one orientation only learns it there; on stochastic textures (grass,
tissue, gravel) a test normal is a new arrangement of the same structure, and the student's error on it is what a
false alarm is made of. Flips and quarter turns give the student more of that structure per image at no cost.
Photometric jitter does the same for lighting: a tile photographed brighter or flatter than any training normal is
still normal, but a student that never saw that exposure mismatches the teacher over the whole image (EfficientAD
§3.3 jitters brightness, contrast and saturation by ±20 % for the same reason).
"""
from __future__ import annotations

import torch

# "none": as recorded; "flip": random horizontal and vertical flips; "dihedral": flips and quarter turns (the
# 8 symmetries of the square; a square input, which every image here is after preprocessing); "photometric":
# brightness and contrast each scaled by a factor drawn from [1 − PHOTOMETRIC_JITTER, 1 + PHOTOMETRIC_JITTER].
AUGMENTATIONS = ("none", "flip", "dihedral", "photometric")
PHOTOMETRIC_JITTER = 0.2


def augment_generator(seed: int, rank: int, epoch: int, step: int) -> torch.Generator:
    """A generator fixed by where the batch is in training, so a resumed run draws the same augmentations."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 10_007 + epoch) * 1_000_003 + step)


def photometric_jitter(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                       generator: torch.Generator) -> torch.Tensor:
    """Normalised B×C×H×W → each image's brightness and contrast jittered in pixel space ([0, 1], clamped).

    Brightness multiplies the pixels by b; contrast scales each pixel's offset from the image's mean by c (as
    torchvision's ColorJitter, which takes a luminance-weighted mean), b and c uniform in
    [1 − PHOTOMETRIC_JITTER, 1 + PHOTOMETRIC_JITTER].
    """
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    factors = 1.0 + PHOTOMETRIC_JITTER * (2.0 * torch.rand((images.shape[0], 2), generator=generator) - 1.0)
    brightness, contrast = (factors[:, i].to(images).view(-1, 1, 1, 1) for i in range(2))
    pixels = (images * std_t + mean_t) * brightness
    grey = pixels.mean(dim=(1, 2, 3), keepdim=True)
    pixels = ((pixels - grey) * contrast + grey).clamp(0.0, 1.0)
    return (pixels - mean_t) / std_t


def augment_batch(images: torch.Tensor, mode: str, generator: torch.Generator,
                  normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> torch.Tensor:
    """B×C×H×W → the same batch with each image flipped / turned / re-lit at random (``mode`` in AUGMENTATIONS).

    ``normalization`` (mean, std) is the preprocessing's, needed by "photometric" to work on pixel values.
    """
    if mode == "none":
        return images
    if mode not in AUGMENTATIONS:
        raise ValueError(f"--augment: expected one of {', '.join(AUGMENTATIONS)}, got {mode!r}")
    if mode == "photometric":
        if normalization is None:
            raise ValueError("--augment photometric needs the preprocessing's mean and std")
        return photometric_jitter(images, normalization[0], normalization[1], generator)
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

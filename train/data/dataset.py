"""Torch Dataset over MVTec samples, using only the shared edge.preprocess path."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from edge.preprocess import PreprocessSpec, load_view, preprocess_rgb
from train.data.mvtec import MVTecLayoutError, Sample


class ImageDataset(Dataset):
    """Items are dicts: image (float32 3×S×S, normalised), label (int), category (str), path (str) and,
    when with_masks=True, mask (uint8 {0,1} 1×S×S; zeros for normal images).

    cache=True keeps each decoded image (resized to S×S uint8, 4× smaller than the float input) and its
    mask in memory after the first read; normalisation still runs through edge.preprocess.preprocess_rgb
    on every access, so cached and uncached items are identical.
    With DataLoader workers each worker process holds its OWN cache (filled lazily, and lost when
    non-persistent workers are re-created each epoch). Either use persistent_workers=True, or call
    precompute() in the parent before building the DataLoader: forked workers then share the filled
    cache copy-on-write and never decode again.
    """

    def __init__(self, samples: Sequence[Sample], spec: PreprocessSpec, with_masks: bool = False,
                 cache: bool = False) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.with_masks = with_masks
        self.cache = cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        if with_masks:
            for s in self.samples:
                if s.label == 1 and s.mask_path is None:
                    raise MVTecLayoutError(f"{s.path}: anomalous image has no ground-truth mask")

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.samples[index]
        view, mask = load_view(s.path, self.spec, s.mask_path if self.with_masks else None)
        if self.with_masks and mask is None:
            mask = np.zeros((self.spec.image_size, self.spec.image_size), np.uint8)
        # Resizing is idempotent in preprocess_rgb, so caching the resized image changes nothing downstream.
        return view, mask

    def _entry(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.cache:
            return self._load(index)
        entry = self._cache.get(index)
        if entry is None:
            entry = self._cache[index] = self._load(index)
        return entry

    def precompute(self, progress: bool = True) -> None:
        """Fill the cache now (in this process); also surfaces any unreadable image before training starts."""
        if not self.cache:
            raise ValueError("precompute() needs ImageDataset(..., cache=True)")
        for i in tqdm(range(len(self)), desc="decoding images", disable=not progress, leave=False):
            self._entry(i)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        s = self.samples[index]
        rgb, mask = self._entry(index)
        item = {"image": torch.from_numpy(preprocess_rgb(rgb, self.spec)), "label": int(s.label),
                "category": s.category, "path": str(s.path)}
        if mask is not None:  # exactly when with_masks
            item["mask"] = torch.from_numpy(mask[None].copy())  # copy: callers may modify it in place
        return item

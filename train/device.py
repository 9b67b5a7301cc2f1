"""--device resolution shared by training and evaluation."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """'auto' → CUDA when available else CPU; 'cuda[:N]' without a GPU is a one-line error.

    Under DDP (`local_rank` given) each process takes the GPU of its local rank.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA GPU is available (use --device cpu or auto)")
        try:
            index = torch.device(name).index
        except RuntimeError:
            raise ValueError(f"--device: expected auto, cpu or cuda[:N], got {name!r}") from None
        return torch.device("cuda", local_rank if local_rank is not None else (index or 0))
    if name != "cpu":
        raise ValueError(f"--device: expected auto, cpu or cuda[:N], got {name!r}")
    return torch.device("cpu")

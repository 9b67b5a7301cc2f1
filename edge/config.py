"""Run / calibrate configuration: the dataclasses behind ``edge-run`` and ``edge-calibrate``.

Every field of RunConfig/CalibrateConfig and of their groups is one flag and one TOML key
(``edge.cliconfig``): ``raise_k`` ↔ ``--raise-k`` ↔ ``raise_k`` / ``raise-k`` at top level or in a
``[decision]`` table; the groups are ``[source]``, ``[decision]``, ``[sinks]`` (edge.sinks.SinkConfig)
and ``[status]`` (edge.status.StatusConfig, flags ``--status-*``).  Precedence: defaults <
``--config FILE`` < flags; a source chosen on the command line replaces the file's.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edge.cliconfig import ConfigCli, ConfigError, group, option
from edge.devices import DeviceError, check_device
from edge.sinks.config import SinkConfig
from edge.status import StatusConfig

__all__ = ["ConfigError", "SourceConfig", "DecisionConfig", "RunConfig", "CalibrateConfig", "parse_config"]

C = TypeVar("C")

DEVICE_HELP = ("inference device: cpu; cuda or tensorrt (.onnx, ONNX Runtime GPU build); gpu or npu (.xml, "
               "OpenVINO); auto = the fastest one here that the file's engine and its accuracy guard allow")
TRT_CACHE_HELP = ("TensorRT engine cache directory, one subdirectory per model file (default: "
                  "$STATE_DIRECTORY/trt-cache under systemd, i.e. /var/lib/dcam-edge/trt-cache, else "
                  "$XDG_CACHE_HOME/dcam-edge/trt-cache)")


def _check_device(cfg: Any) -> None:
    try:
        check_device(cfg.device)
    except DeviceError as e:
        raise ConfigError(str(e)) from None


def _require_non_negative(cfg: Any, *names: str) -> None:
    """ConfigError naming the flag of the first of ``names`` that is set and negative (or NaN)."""
    for name in names:
        value = getattr(cfg, name)
        # Written as 'not >= 0' so NaN (which compares false with everything) is rejected too.
        if value is not None and not value >= 0:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r}: expected >= 0")


@dataclass
class SourceConfig:
    """Where frames come from (exactly one of camera / picamera / source)."""

    camera: int | None = option(None, "camera index N (cv2.VideoCapture, V4L2 on Linux)")
    picamera: bool = option(False, "Raspberry Pi camera via picamera2")
    source: str | None = option(None,
        "video file, rtsp://|http:// stream URL, image directory or glob (sorted)")
    roi: str | None = option(None, "crop x,y,w,h (pixels) before the model")
    camera_width: int | None = option(None, "requested camera frame width")
    camera_height: int | None = option(None, "requested camera frame height")
    camera_fps: float | None = option(None, "requested camera frame rate")
    open_timeout: float = option(10.0,
        "seconds to keep retrying a source that does not open at start-up before giving up")
    reconnect_max_backoff: float = option(30.0,
        "upper bound (s) of the exponential backoff between reconnect attempts")
    latest_only: bool = option(True,
        "live sources: score only the newest frame, dropping (and counting) frames the model cannot keep up with")
    stall_timeout: float = option(5.0,
        "live sources: no frame for this many seconds is a stall (logged, counted, /healthz 503, source "
        "reconnected); 0 = off, e.g. for hardware-triggered cameras")

    def __post_init__(self) -> None:
        _require_non_negative(self, "open_timeout", "reconnect_max_backoff", "stall_timeout")


@dataclass
class DecisionConfig:
    """Threshold choice and debouncing (k of the last n frames raise, m clean frames clear)."""

    category: str | None = option(None, "use this category's threshold from the manifest")
    threshold: float | None = option(None, "override the manifest threshold")
    raise_k: int = option(2, "raise when k of the last n frames exceed the threshold")
    raise_n: int = option(3, "window length n for raising")
    clear_m: int = option(5, "clear after m consecutive frames at or below the threshold")


@dataclass
class RunConfig:
    """``edge-run``: score a frame stream with an exported model and raise debounced alarms."""

    model: str | None = option(None, "exported model (.onnx/.xml/.tflite) with its manifest")
    threads: int | None = option(None, "inference threads (engine default if unset)")
    device: str = option("cpu", DEVICE_HELP)
    trt_cache_dir: str | None = option(None, TRT_CACHE_HELP)
    max_frames: int | None = option(None, "stop after N scored frames")
    duration: float | None = option(None, "stop after S seconds")
    jsonl: str | None = option(None, "append one JSON line per frame here (default stdout)")
    jsonl_every: int = option(1,
        "write every k-th frame's line (event frames are always written)")
    overlay_interval: float = option(1.0,
        "seconds between heat-map overlays for /latest.jpg (event frames always get one)")
    sink_close_timeout: float = option(5.0, "seconds sinks may take to flush on exit")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR (stderr)")
    source: SourceConfig = group(SourceConfig)
    decision: DecisionConfig = group(DecisionConfig)
    status: StatusConfig = group(StatusConfig, prefix="status", title="status endpoint")  # port unset = off
    sinks: SinkConfig = group(SinkConfig, title="alarm sinks")  # no sink enabled by default

    def __post_init__(self) -> None:
        _require_non_negative(self, "max_frames", "duration", "overlay_interval", "sink_close_timeout")
        _check_device(self)


@dataclass
class CalibrateConfig:
    """``edge-calibrate``: score known-good frames and rewrite the manifest threshold (backup kept)."""

    model: str | None = option(None, "exported model (.onnx/.xml/.tflite) with its manifest")
    threads: int | None = option(None, "inference threads (engine default if unset)")
    device: str = option("cpu", DEVICE_HELP)
    trt_cache_dir: str | None = option(None, TRT_CACHE_HELP)
    frames: int = option(300, "number of known-good frames to score")
    target_fpr: float = option(0.001, "false-alarm rate per frame the threshold aims at")
    category: str | None = option(None,
        "write this category's threshold (default: the global one); must be in the manifest unless --new-category")
    new_category: bool = option(False,
        "allow --category to name a category the manifest does not have yet (adds it)")
    allow_fewer_frames: int | None = option(None,
        "accept a source that ends before --frames if at least N frames arrived (default: refuse)")
    log_level: str = option("INFO", "DEBUG, INFO, WARNING or ERROR (stderr)")
    source: SourceConfig = group(SourceConfig)

    def __post_init__(self) -> None:
        _check_device(self)


# A source chosen on the command line replaces the file's rather than adding a second one.
SOURCE_SELECTORS = ("source.camera", "source.picamera", "source.source")


def config_cli(cls: type[C], prog: str, description: str = "") -> ConfigCli[C]:
    """The flags + TOML parser of RunConfig or CalibrateConfig."""
    return ConfigCli(cls, prog, description, alternatives=[SOURCE_SELECTORS])


def parse_config(cls: type[C], argv: Sequence[str] | None, prog: str = "edge-run", description: str = "",
                 data: Mapping[str, Any] | None = None) -> C:
    """Parse flags (+ ``--config FILE``, or ``data`` as if read from one) into ``cls``; flags override the file."""
    return config_cli(cls, prog, description).parse(argv, data)

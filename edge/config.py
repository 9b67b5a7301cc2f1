"""Run / calibrate configuration: dataclasses, their CLI flags and the equivalent TOML file.

Every field of RunConfig/CalibrateConfig and their nested SourceConfig/DecisionConfig is one
flag (``raise_k`` ↔ ``--raise-k``) and one TOML key (``raise_k`` or ``raise-k``, at top level
or inside a ``[source]`` / ``[decision]`` table).  The alarm sinks and the status endpoint
own their option groups (``edge.sinks.SinkConfig`` ↔ ``[sinks]``, ``edge.status.StatusConfig``
↔ ``[status]``); they are parsed by those modules' own ``add_*_arguments`` /
``*_config_from_args`` functions.  Precedence: defaults < ``--config FILE`` < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edge.devices import DeviceError, check_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


class ConfigError(ValueError):
    """Invalid configuration file, key or value."""


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


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

    camera: int | None = field(default=None, metadata=_help("camera index N (cv2.VideoCapture, V4L2 on Linux)"))
    picamera: bool = field(default=False, metadata=_help("Raspberry Pi camera via picamera2"))
    source: str | None = field(default=None, metadata=_help(
        "video file, rtsp://|http:// stream URL, image directory or glob (sorted)"))
    roi: str | None = field(default=None, metadata=_help("crop x,y,w,h (pixels) before the model"))
    camera_width: int | None = field(default=None, metadata=_help("requested camera frame width"))
    camera_height: int | None = field(default=None, metadata=_help("requested camera frame height"))
    camera_fps: float | None = field(default=None, metadata=_help("requested camera frame rate"))
    open_timeout: float = field(default=10.0, metadata=_help(
        "seconds to keep retrying a source that does not open at start-up before giving up"))
    reconnect_max_backoff: float = field(default=30.0, metadata=_help(
        "upper bound (s) of the exponential backoff between reconnect attempts"))
    latest_only: bool = field(default=True, metadata=_help(
        "live sources: score only the newest frame, dropping (and counting) frames the model cannot keep up with"))
    stall_timeout: float = field(default=5.0, metadata=_help(
        "live sources: no frame for this many seconds is a stall (logged, counted, /healthz 503, source "
        "reconnected); 0 = off, e.g. for hardware-triggered cameras"))

    def __post_init__(self) -> None:
        _require_non_negative(self, "open_timeout", "reconnect_max_backoff", "stall_timeout")


@dataclass
class DecisionConfig:
    """Threshold choice and debouncing (k of the last n frames raise, m clean frames clear)."""

    category: str | None = field(default=None, metadata=_help("use this category's threshold from the manifest"))
    threshold: float | None = field(default=None, metadata=_help("override the manifest threshold"))
    raise_k: int = field(default=2, metadata=_help("raise when k of the last n frames exceed the threshold"))
    raise_n: int = field(default=3, metadata=_help("window length n for raising"))
    clear_m: int = field(default=5, metadata=_help("clear after m consecutive frames at or below the threshold"))


@dataclass
class RunConfig:
    """``edge-run``: score a frame stream with an exported model and raise debounced alarms."""

    model: str | None = field(default=None, metadata=_help("exported model (.onnx/.xml/.tflite) with its manifest"))
    threads: int | None = field(default=None, metadata=_help("inference threads (engine default if unset)"))
    device: str = field(default="cpu", metadata=_help(DEVICE_HELP))
    trt_cache_dir: str | None = field(default=None, metadata=_help(TRT_CACHE_HELP))
    max_frames: int | None = field(default=None, metadata=_help("stop after N scored frames"))
    duration: float | None = field(default=None, metadata=_help("stop after S seconds"))
    jsonl: str | None = field(default=None, metadata=_help("append one JSON line per frame here (default stdout)"))
    jsonl_every: int = field(default=1, metadata=_help(
        "write every k-th frame's line (event frames are always written)"))
    overlay_interval: float = field(default=1.0, metadata=_help(
        "seconds between heat-map overlays for /latest.jpg (event frames always get one)"))
    sink_close_timeout: float = field(default=5.0, metadata=_help("seconds sinks may take to flush on exit"))
    log_level: str = field(default="INFO", metadata=_help("DEBUG, INFO, WARNING or ERROR (stderr)"))
    source: SourceConfig = field(default_factory=SourceConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    status: Any = None  # edge.status.StatusConfig (port None = endpoint off); flags --status-*, TOML [status]
    sinks: Any = None  # edge.sinks.SinkConfig (no sink enabled by default); flags per sink, TOML [sinks]

    def __post_init__(self) -> None:
        _require_non_negative(self, "max_frames", "duration", "overlay_interval", "sink_close_timeout")
        _check_device(self)


@dataclass
class CalibrateConfig:
    """``edge-calibrate``: score known-good frames and rewrite the manifest threshold (backup kept)."""

    model: str | None = field(default=None, metadata=_help("exported model (.onnx/.xml/.tflite) with its manifest"))
    threads: int | None = field(default=None, metadata=_help("inference threads (engine default if unset)"))
    device: str = field(default="cpu", metadata=_help(DEVICE_HELP))
    trt_cache_dir: str | None = field(default=None, metadata=_help(TRT_CACHE_HELP))
    frames: int = field(default=300, metadata=_help("number of known-good frames to score"))
    target_fpr: float = field(default=0.001, metadata=_help("false-alarm rate per frame the threshold aims at"))
    category: str | None = field(default=None, metadata=_help(
        "write this category's threshold (default: the global one); must be in the manifest unless --new-category"))
    new_category: bool = field(default=False, metadata=_help(
        "allow --category to name a category the manifest does not have yet (adds it)"))
    allow_fewer_frames: int | None = field(default=None, metadata=_help(
        "accept a source that ends before --frames if at least N frames arrived (default: refuse)"))
    log_level: str = field(default="INFO", metadata=_help("DEBUG, INFO, WARNING or ERROR (stderr)"))
    source: SourceConfig = field(default_factory=SourceConfig)

    def __post_init__(self) -> None:
        _check_device(self)


def _optional_module(name: str) -> Any:
    """Import edge.sinks / edge.status if present (developed separately; absent → feature off)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


# The externally owned option groups: (config field, module, add-arguments fn, from-args fn).
EXTERNAL_GROUPS = (("sinks", "edge.sinks", "add_sink_arguments", "sink_config_from_args"),
                   ("status", "edge.status", "add_status_arguments", "status_config_from_args"))


# --------------------------------------------------------------------------------------------
# dataclass ↔ argparse ↔ TOML
# --------------------------------------------------------------------------------------------
def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _scalar_converter(tp: Any, flag: str) -> Callable[[Any], Any]:
    def conv(value: Any) -> Any:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{flag} {value!r}: expected true or false")
        if (tp is int and isinstance(value, float)) or isinstance(value, bool):
            raise ConfigError(f"{flag} {value!r}: expected {tp.__name__}")
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} {value!r}: expected {tp.__name__}") from None
    return conv


@dataclass
class _Option:
    dest: str
    flag: str
    owner: tuple[str, ...]  # path of nested dataclass fields, e.g. ("source",)
    is_bool: bool
    convert: Callable[[Any], Any]
    default: Any
    help: str


def _options(cls: type, owner: tuple[str, ...] = ()) -> list[_Option]:
    """One option per scalar field of ``cls`` and its nested dataclasses (externally owned groups skipped)."""
    hints = typing.get_type_hints(cls)
    external = {g[0] for g in EXTERNAL_GROUPS}
    out: list[_Option] = []
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out += _options(tp, owner + (f.name,))
            continue
        if f.name in external:
            continue
        if tp not in (bool, int, float, str):
            raise TypeError(f"{cls.__name__}.{f.name}: only bool/int/float/str fields map onto flags")
        flag = "--" + f.name.replace("_", "-")
        out.append(_Option(f.name, flag, owner, tp is bool, _scalar_converter(tp, flag),
                           f.default if f.default is not dataclasses.MISSING else None,
                           str(f.metadata.get("help", ""))))
    return out


def _external_groups(cls: type) -> list[tuple[str, Any, Any]]:
    """(field, add-arguments fn, from-args fn) for the sink/status groups ``cls`` has and that are installed."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = []
    for fname, module, add_fn, from_fn in EXTERNAL_GROUPS:
        if fname in names:
            mod = _optional_module(module)
            if mod is not None:
                out.append((fname, getattr(mod, add_fn), getattr(mod, from_fn)))
    return out


def _argparse_type(o: _Option) -> Callable[[str], Any]:
    def conv(text: str) -> Any:
        try:
            return o.convert(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return conv


def build_parser(cls: type, prog: str, description: str) -> tuple[argparse.ArgumentParser, list[_Option]]:
    """argparse parser: ``--config`` + one flag per field (defaults None = "not given") + sink/status flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE", help="TOML file with the same keys as these flags "
                        "(top level or [source]/[decision] tables; [sinks] and [status] for those groups)")
    opts = _options(cls)
    groups: dict[tuple[str, ...], Any] = {}
    for o in opts:
        group = groups.get(o.owner)
        if group is None:
            group = groups[o.owner] = parser.add_argument_group(o.owner[-1] if o.owner else "general")
        # argparse %-formats help strings: escape literal percent signs.
        kw: dict[str, Any] = {"dest": o.dest, "default": None,
                              "help": (o.help + ("" if o.default is None else f" (default: {o.default!r})")
                                       ).replace("%", "%%")}
        if o.is_bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _argparse_type(o)
        group.add_argument(o.flag, **kw)
    for _fname, add_fn, _from_fn in _external_groups(cls):
        add_fn(parser)
    return parser, opts


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; ConfigError naming the file if missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: invalid TOML ({e})") from None


def flatten_toml(data: dict[str, Any], opts: list[_Option], where: str,
                 external: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(own flat field values, {external group: its table}); ConfigError for unknown keys or bad values."""
    by_dest = {o.dest: o for o in opts}
    tables = {o.owner[0] for o in opts if o.owner}
    flat: dict[str, Any] = {}
    ext: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any, table: str | None) -> None:
        dest = key.replace("-", "_")
        if dest not in by_dest:
            raise ConfigError(f"{where}: unknown key {key!r}" + (f" in [{table}]" if table else "") +
                              f"; expected one of {sorted(by_dest)}" +
                              (f" or a [{'] / ['.join(external)}] table" if external else ""))
        flat[dest] = by_dest[dest].convert(value)

    for key, value in data.items():
        if key in external:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key!r} must be a [{key}] table")
            ext[key] = value
        elif isinstance(value, dict) and key in tables:
            for k, v in value.items():
                put(k, v, key)
        else:
            put(key, value, None)
    return flat, ext


SELECTORS = ("camera", "picamera", "source")


def parse_config(cls: type, argv: Sequence[str] | None, prog: str, description: str) -> Any:
    """Parse flags (+ ``--config FILE``) into ``cls`` (RunConfig or CalibrateConfig); flags override the file."""
    parser, opts = build_parser(cls, prog, description)
    args = parser.parse_args(argv)
    own = {o.dest for o in opts}
    given = {k: v for k, v in vars(args).items() if v is not None and k in own}
    externals = _external_groups(cls)
    values: dict[str, Any] = {}
    ext_tables: dict[str, dict[str, Any]] = {}
    if args.config:
        values, ext_tables = flatten_toml(load_toml(args.config), opts, f"--config {args.config}",
                                          [e[0] for e in externals])
        if any(k in given for k in SELECTORS):
            # A source chosen on the command line replaces the file's source rather than adding a second one.
            for k in SELECTORS:
                values.pop(k, None)
    values.update(given)
    extra = {fname: from_fn(args, ext_tables.get(fname)) for fname, _add, from_fn in externals}
    return build_config(cls, values, extra)


def build_config(cls: type, values: dict[str, Any], extra: dict[str, Any] | None = None) -> Any:
    """Instantiate ``cls`` and its nested dataclasses from flat field values (+ ready-made external groups)."""
    opts = _options(cls)
    nested: dict[tuple[str, ...], dict[str, Any]] = {}
    for o in opts:
        if o.dest in values:
            nested.setdefault(o.owner, {})[o.dest] = values[o.dest]
    unknown = set(values) - {o.dest for o in opts}
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)} for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = dict(nested.get((), {}))
    for f in dataclasses.fields(cls):
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = tp(**nested.get((f.name,), {}))
    kwargs.update(extra or {})
    return cls(**kwargs)

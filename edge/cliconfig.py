"""One CLI ↔ config mechanism for every console script: a config dataclass ↔ flags ↔ a TOML file.

Every leaf field of the dataclass, and of the dataclass groups nested in it, is one flag and one key:

  flag  ``--<group prefixes>-<field>`` with dashes; a group has no prefix unless declared with
        ``group(Cls, prefix="rd")`` (→ ``--rd-loss-mode``); ``option(flag=...)`` renames one flag.
  key   the flag's name (``-`` or ``_``) at the top of the file, or the field's name inside its
        group's table (``[source] camera``, ``[model.rd] loss_mode``); a group without a prefix is
        transparent, so its keys and tables may also be written at its parent's level.

Types: ``bool`` → ``--x`` / ``--no-x``; ``int``, ``float``, ``str`` (Optional allowed) with choices
from ``Literal[...]`` or ``option(choices=...)``; ``tuple`` / ``list`` → several values after the flag
(``nargs``: ``+`` or the tuple's length), or one text cut by ``option(split=",")`` (or any function),
or ``option(repeat=True)`` (the flag once per item).  One coercion rule: a flag's text is parsed as
the field's type; a file's value must already have it (an integer for int, a number for float,
true/false for bool, an array for a list, or the text a ``split`` field takes on the command line).

Precedence: field defaults < ``--config FILE`` < flags.  Every error is one line naming the flag, or
the file and key, and what was expected: a ``ConfigError``, or the ``config_error`` class (a
ValueError) of the group the key belongs to (SinkConfig → SinkConfigError).  ``run_cli`` prints any
of the package's ValueErrors as ``error: <line>`` and returns exit status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeGuard, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

T = TypeVar("T")
Splitter = Callable[[str], Sequence[str]]


class ConfigError(ValueError):
    """Invalid flag, configuration file, key or value (one line naming where it came from)."""


# ---- declaring fields -----------------------------------------------------------------------------
def option(default: Any = MISSING, help: str = "", *, flag: str | None = None, metavar: str | None = None,
           choices: Sequence[Any] | None = None, split: str | Splitter | None = None, repeat: bool = False,
           nargs: int | str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its CLI settings: ``help``; ``flag`` (another flag name); ``metavar``;
    ``choices``; for lists ``split`` (one text cut by this separator or function), ``repeat`` (one flag
    per item) or ``nargs``; ``cli=False`` (settable in the file only, e.g. secrets kept out of argv)."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "choices": tuple(choices) if choices else None,
            "split": split, "repeat": repeat, "nargs": nargs, "cli": cli}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(cls: type, *, prefix: str = "", title: str | None = None, **defaults: Any) -> Any:
    """A nested dataclass group field: flags ``--<prefix>-<field>`` (no prefix: ``--<field>``), TOML table
    ``[<field name>]``; ``defaults`` override the class's for this use (one class used twice, e.g. the
    webhook's and MQTT's delivery options)."""
    meta = {"prefix": prefix, "title": title, "defaults": dict(defaults)}
    return field(default_factory=(lambda: cls(**defaults)) if defaults else cls, metadata=meta)


def group_types(cls: type) -> dict[str, type]:
    """The group fields of dataclass ``cls`` (declared with :func:`group`) and the dataclass each holds."""
    return {f.name: type(f.default_factory()) for f in dataclasses.fields(cls)
            if "prefix" in f.metadata and callable(f.default_factory)}


# ---- the model of one config class ------------------------------------------------------------------
_TEXT_PARSERS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_DESCRIBE = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_DESCRIBE_ITEMS = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@dataclass(frozen=True)
class _Group:
    """One dataclass in the tree: the root (path ()) or a nested group field."""

    path: tuple[str, ...]
    cls: type
    prefixes: tuple[str, ...]  # flag prefix of each group along the path ("" = none)
    defaults: Mapping[str, Any]
    title: str
    error: type[ValueError]  # raised for its keys' errors: the class's ``config_error``, else its parent's

    @property
    def transparent(self) -> bool:
        return bool(self.path) and not self.prefixes[-1]


@dataclass(frozen=True)
class _Option:
    """One leaf field: its flag, its names in the file and how its values are converted."""

    path: tuple[str, ...]          # field names from the root, e.g. ("model", "rd", "loss_mode")
    prefixes: tuple[str, ...]      # of the groups along path[:-1]
    kind: type                     # bool / int / float / str (the item type of a list)
    container: type | None         # tuple or list for list fields, else None
    length: int | None             # fixed tuple length (tuple[float, float] → 2)
    choices: tuple[Any, ...] | None
    split: str | Splitter | None
    repeat: bool
    nargs: int | str | None
    flag_name: str | None          # option(flag=...) without the dashes
    metavar: str | None
    help: str
    default: Any
    cli: bool
    error: type[ValueError]

    @property
    def dest(self) -> str:
        return ".".join(self.path)

    def name(self, level: int = 0) -> str:
        """The key naming this option in the table of its ancestor group at depth ``level`` (0 = top)."""
        return "_".join([p for p in self.prefixes[level:] if p] + [self.path[-1]])

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name()).replace("_", "-")

    def names(self, level: int) -> set[str]:
        names = {self.name(level)}
        if self.flag_name and not any(self.prefixes[:level]):  # the renamed flag is the same key there
            names.add(self.flag_name.replace("-", "_"))
        return names

    def describe(self) -> str:
        if self.container is None:
            return _DESCRIBE[self.kind]
        count = f"{self.length} " if self.length else ""
        text = f"an array of {count}{_DESCRIBE_ITEMS[self.kind]}"
        return text + (" or one string of them" if self.split else "")


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, _unwrap_optional(hints[f.name])) for f in dataclasses.fields(cls) if f.init]


def _field_default(f: dataclasses.Field[Any], defaults: Mapping[str, Any]) -> Any:
    if f.name in defaults:
        return defaults[f.name]
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def _leaf(g: _Group, f: dataclasses.Field[Any], tp: Any) -> _Option:
    meta = f.metadata
    choices = meta.get("choices")
    container = length = None
    if typing.get_origin(tp) in (tuple, list):
        container = typing.get_origin(tp)
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        length = len(items) if container is tuple and Ellipsis not in typing.get_args(tp) else None
        tp = items[0] if items else str
    if typing.get_origin(tp) is typing.Literal:
        choices = typing.get_args(tp)
        tp = type(choices[0])
    if tp not in _DESCRIBE:
        raise TypeError(f"{g.cls.__name__}.{f.name}: {tp!r} does not map onto a flag (bool, int, float, str, "
                        "tuple/list of them, Optional, Literal, or a nested dataclass group)")
    flag = meta.get("flag")
    return _Option(path=g.path + (f.name,), prefixes=g.prefixes, kind=tp, container=container, length=length,
                   choices=tuple(choices) if choices else None, split=meta.get("split"),
                   repeat=bool(meta.get("repeat")), nargs=meta.get("nargs"),
                   flag_name=flag.lstrip("-").replace("-", "_") if flag else None, metavar=meta.get("metavar"),
                   help=str(meta.get("help") or ""), default=_field_default(f, g.defaults), cli=meta.get("cli", True),
                   error=g.error)


def _is_group(tp: Any) -> TypeGuard[type]:
    """A field typed as a dataclass is a nested group."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _walk(g: _Group, groups: list[_Group], options: list[_Option]) -> None:
    groups.append(g)
    for f, tp in _fields(g.cls):
        if _is_group(tp):
            meta = f.metadata
            _walk(_Group(g.path + (f.name,), tp, g.prefixes + (str(meta.get("prefix", "")),),
                         dict(meta.get("defaults") or {}), str(meta.get("title") or f.name.replace("_", " ")),
                         getattr(tp, "config_error", g.error)), groups, options)
        else:
            options.append(_leaf(g, f, tp))


# ---- converting values ------------------------------------------------------------------------------
def _scalar(o: _Option, value: Any, where: str, text: bool) -> Any:
    tp = o.kind
    if text and isinstance(value, str) and tp is not str:
        try:
            if tp is bool:
                if value.lower() not in _TRUE + _FALSE:
                    raise ValueError(value)
                value = value.lower() in _TRUE
            else:
                value = _TEXT_PARSERS[tp](value)
        except ValueError:
            raise o.error(f"{where}: expected {_DESCRIBE[tp]}, got {value!r}") from None
    ok = {bool: isinstance(value, bool), str: isinstance(value, str),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool)}[tp]
    if not ok:
        raise o.error(f"{where}: expected {_DESCRIBE[tp]}, got {value!r}")
    value = float(value) if tp is float else value
    if o.choices is not None and value not in o.choices:
        raise o.error(f"{where}: expected one of {', '.join(map(str, o.choices))}, got {value!r}")
    return value


def _split(o: _Option, text: str) -> Sequence[str]:
    if callable(o.split):
        return o.split(text)  # raises its own one-line error naming the option
    return [t.strip() for t in text.split(o.split or ",") if t.strip()]


def convert(o: _Option, value: Any, where: str, text: bool) -> Any:
    """``value`` as the field's type; ``text``: strings are parsed (flags), else they must already match."""
    if o.container is None:
        return _scalar(o, value, where, text)
    if isinstance(value, str) and o.split:
        items, text = _split(o, value), True
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        raise o.error(f"{where}: expected {o.describe()}, got {value!r}")
    if o.length is not None and len(items) != o.length:
        raise o.error(f"{where}: expected {o.describe()}, got {list(items)!r}")
    return o.container(_scalar(o, item, where, text) for item in items)


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


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are ConfigErrors (run_cli prints them as one line, exit status 2)."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(message)


# ---- the CLI of one config class ------------------------------------------------------------------
class ConfigCli(Generic[T]):
    """Flags and ``--config FILE.toml`` for the dataclass ``cls``, and the instance they describe.

    ``help``: help texts by flag name (``"rd_loss_mode"``) for fields without ``option(help=...)``;
    ``alternatives``: sets of dests (``"source.camera"``) of which one given as a flag replaces the
    file's value of all of them (a camera on the command line replaces the file's video source).
    """

    def __init__(self, cls: type[T], prog: str, description: str = "", *, help: Mapping[str, str] | None = None,
                 alternatives: Sequence[Sequence[str]] = ()) -> None:
        self.cls, self.prog, self.description = cls, prog, description
        self._help = dict(help or {})
        self.groups: list[_Group] = []
        self.options: list[_Option] = []
        _walk(_Group((), cls, (), {}, "options", getattr(cls, "config_error", ConfigError)), self.groups, self.options)
        self._alternatives = [set(a) for a in alternatives]
        self._keys = {g.path: self._keys_of(g) for g in self.groups}
        self._tables = {g.path: self._tables_of(g) for g in self.groups}

    # -- the file's vocabulary at each group: keys (options) and tables (groups) ---------------------
    def _below(self, g: _Group, path: tuple[str, ...]) -> bool:
        return path[:len(g.path)] == g.path

    def _keys_of(self, g: _Group) -> dict[str, _Option]:
        keys: dict[str, _Option] = {}
        for o in self.options:
            if self._below(g, o.path[:-1]):
                for name in o.names(len(g.path)):
                    if keys.setdefault(name, o) is not o:
                        raise TypeError(f"{self.cls.__name__}: key {name!r} names both {keys[name].dest} and {o.dest}")
        return keys

    def _tables_of(self, g: _Group) -> dict[str, _Group]:
        tables: dict[str, _Group] = {}
        for child in self.groups:
            if len(child.path) == len(g.path) + 1 and self._below(g, child.path):
                tables[child.path[-1]] = child
                if child.transparent:  # a prefix-less group's tables are its parent's too
                    for name, sub in self._tables_of(child).items():
                        tables.setdefault(name, sub)
        return tables

    # -- argparse ---------------------------------------------------------------------------------
    def _help_text(self, o: _Option) -> str:
        text = o.help or self._help.get(o.name(), o.name().replace("_", " "))
        if o.default not in (None, "", (), []):
            shown = o.default
            if o.container is not None:
                shown = (o.split if isinstance(o.split, str) else " ").join(map(str, o.default))
            text += f" (default: {shown})"
        return text.replace("%", "%%")  # argparse %-formats help strings

    def build_parser(self) -> argparse.ArgumentParser:
        """``--config FILE`` + one flag per field (absent flags leave no attribute: the file or default decides)."""
        parser = _Parser(prog=self.prog, description=self.description)
        tables = sorted(self._tables[()])
        parser.add_argument("--config", metavar="FILE.toml",
                            help="TOML file with the same keys as these flags (- or _)"
                                 + (f"; a group's keys may sit in its table: [{'], ['.join(tables)}]" if tables else "")
                                 + "; flags override it")
        sections: dict[tuple[str, ...], Any] = {(): parser}
        for g in self.groups[1:]:
            sections[g.path] = parser.add_argument_group(g.title)
        for o in self.options:
            if not o.cli:
                continue
            kw: dict[str, Any] = {"dest": o.dest, "default": argparse.SUPPRESS, "help": self._help_text(o)}
            if o.kind is bool and o.container is None:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["metavar"] = o.metavar or ("{" + ",".join(map(str, o.choices)) + "}" if o.choices
                                              else o.name().upper())
                if o.container is not None and o.repeat:
                    kw["action"] = "append"
                elif o.container is not None and not o.split:
                    kw["nargs"] = o.nargs or o.length or "+"
            sections[o.path[:-1]].add_argument(o.flag, **kw)
        return parser

    # -- values -----------------------------------------------------------------------------------
    def file_values(self, data: Mapping[str, Any], label: str) -> dict[str, Any]:
        """{dest: value} of a parsed TOML document; ConfigError naming ``label`` and the key otherwise."""
        out: dict[str, Any] = {}

        def walk(table: Mapping[str, Any], g: _Group, where: str) -> None:
            keys, tables = self._keys[g.path], self._tables[g.path]
            for key, value in table.items():
                name = key.replace("-", "_")
                loc = f"[{where}] {key}" if where else key
                if isinstance(value, dict) and name in tables:
                    walk(value, tables[name], f"{where}.{key}" if where else key)
                    continue
                o = keys.get(name)
                if o is None:
                    if name in tables:
                        raise g.error(f"{label}: {loc}: expected a table [{key}], got {value!r}")
                    raise g.error(f"{label}: {loc}: unknown key; expected one of "
                                      f"{', '.join(sorted(keys))}" + (f" or a table [{'], ['.join(sorted(tables))}]"
                                                                     if tables else ""))
                if o.dest in out:
                    raise o.error(f"{label}: {loc}: {o.flag} is already set elsewhere in the file")
                out[o.dest] = convert(o, value, f"{label}: {loc}", text=False)

        walk(data, self.groups[0], "")
        return out

    def flag_values(self, ns: argparse.Namespace) -> dict[str, Any]:
        """{dest: value} of the flags given on the command line."""
        given = vars(ns)
        return {o.dest: convert(o, given[o.dest], o.flag, text=True) for o in self.options if o.dest in given}

    def config_from_args(self, ns: argparse.Namespace, data: Mapping[str, Any] | None = None) -> T:
        """The config: defaults < the ``--config`` file (or ``data``, an already-read document) < flags."""
        flags = self.flag_values(ns)
        path = getattr(ns, "config", None)
        if data is None and path:
            data, label = load_toml(path), f"--config {path}"
        else:
            label = "config"
        values = self.file_values(data or {}, label)
        for alternative in self._alternatives:
            if alternative & flags.keys():
                for dest in alternative:
                    values.pop(dest, None)
        values.update(flags)
        return self.build(values)

    def parse(self, argv: Sequence[str] | None = None, data: Mapping[str, Any] | None = None) -> T:
        """Parse ``argv`` (default sys.argv[1:]) with its ``--config`` file into the config."""
        return self.config_from_args(self.build_parser().parse_args(argv), data)

    def build(self, values: Mapping[str, Any]) -> T:
        """Instantiate the class and its groups from {dest: converted value} (absent dests keep defaults)."""
        def make(g: _Group) -> Any:
            kwargs = dict(g.defaults)
            for f, tp in _fields(g.cls):
                path = g.path + (f.name,)
                if _is_group(tp):
                    kwargs[f.name] = make(next(c for c in self.groups if c.path == path))
                elif ".".join(path) in values:
                    kwargs[f.name] = values[".".join(path)]
            return g.cls(**kwargs)
        return typing.cast(T, make(self.groups[0]))  # the root group's class is T


def run_cli(body: Callable[[], int | None], errors: tuple[type[BaseException], ...] = (ValueError,)) -> int:
    """Run a console script's body: ``errors`` (the package's ValueErrors, ConfigError among them) become
    one ``error: <first line>`` on stderr and exit status 2; a closed stdout (``| head``) is exit status 0."""
    try:
        return body() or 0
    except errors as e:
        print(f"error: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0

"""edge.cliconfig: one dataclass ↔ flags ↔ TOML mechanism for every console script.

For each console script: ``--config FILE.toml`` gives the same config as the equivalent flags, a flag
overrides the file, and a bad value or unknown key is one ``error:`` line naming the key or flag.
"""
from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from edge.cliconfig import ConfigCli, ConfigError, group, option, run_cli


# ---- the mechanism on a small config ----------------------------------------------------------------
@dataclass
class _Inner:
    mode: Literal["a", "b"] = "a"
    size: int = option(3, "inner size")


@dataclass
class _Outer:
    name: str = option("x", "a name")
    count: int | None = None
    ratio: float = 0.5
    on: bool = True
    pair: tuple[float, float] = (1.0, 2.0)
    items: tuple[int, ...] = option((1, 2), "comma-separated", split=",")
    tags: tuple[str, ...] = option((), "repeatable", flag="--tag", repeat=True)
    plain: _Inner = group(_Inner)
    opts: _Inner = group(_Inner, prefix="opt", size=7)


CLI = ConfigCli(_Outer, "outer")


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_flags_cover_every_field_with_its_type() -> None:
    cfg = CLI.parse(["--name", "n", "--count", "4", "--ratio", "1", "--no-on", "--pair", "3", "4",
                     "--items", "5,6", "--tag", "p", "--tag", "q", "--mode", "b", "--size", "9", "--opt-size", "1"])
    assert cfg == _Outer("n", 4, 1.0, False, (3.0, 4.0), (5, 6), ("p", "q"), _Inner("b", 9), _Inner("a", 1))
    assert CLI.parse([]) == _Outer(opts=_Inner(size=7))  # a group's per-use defaults
    assert "(default: 1,2)" in CLI.build_parser().format_help()


def test_file_keys_tables_and_precedence(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
        name = "file"
        ratio = 2
        opt-size = 5            # a prefixed group's key at top level = its flag's name
        items = "7,8"           # a split field takes the flag's text too
        tag = ["t"]             # the renamed flag's name
        [plain]
        mode = "b"
        [opts]
        mode = "b"
    """)
    cfg = CLI.parse(["--config", path, "--ratio", "3"])
    assert (cfg.name, cfg.ratio, cfg.items, cfg.tags) == ("file", 3.0, (7, 8), ("t",))
    assert cfg.plain == _Inner("b", 3) and cfg.opts == _Inner("b", 5)
    assert CLI.parse(["--config", _toml(tmp_path, "mode = 'b'\n")]).plain.mode == "b"  # transparent group


@pytest.mark.parametrize("text, needle", [
    ("nmae = 'x'", "--config {}: nmae: unknown key; expected one of count, items, mode"),
    ("[opts]\nsise = 1", "--config {}: [opts] sise: unknown key; expected one of mode, size"),
    ("count = '4'", "--config {}: count: expected an integer, got '4'"),
    ("on = 1", "--config {}: on: expected true or false, got 1"),
    ("pair = [1.0]", "--config {}: pair: expected an array of 2 numbers, got [1.0]"),
    ("[plain]\nmode = 'c'", "--config {}: [plain] mode: expected one of a, b, got 'c'"),
    ("plain = 3", "--config {}: plain: expected a table [plain], got 3"),
    ("size = 1\n[plain]\nsize = 2", "[plain] size: --size is already set elsewhere in the file"),
    ("name = ", "invalid TOML"),
])
def test_file_errors_are_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    path = _toml(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as err:
        CLI.parse(["--config", path])
    assert needle.format(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv, needle", [
    (["--count", "x"], "--count: expected an integer, got 'x'"),
    (["--items", "1,y"], "--items: expected an integer, got 'y'"),
    (["--mode", "c"], "--mode: expected one of a, b, got 'c'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "missing.toml"], "--config missing.toml: file not found"),
])
def test_flag_errors_are_one_line_naming_the_flag(argv: list[str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CLI.parse(argv)


def test_run_cli_prints_one_error_line_and_returns_2(capsys) -> None:
    def body() -> int:
        raise ValueError("--x 1: expected 2\nmore detail")
    assert run_cli(body) == 2
    assert capsys.readouterr().err == "error: --x 1: expected 2\n"
    assert run_cli(lambda: None) == 0
    assert run_cli(lambda: 3) == 3


# ---- every console script -------------------------------------------------------------------------
def _script(name: str) -> tuple[ConfigCli, Callable[[list[str]], int]]:
    """(its ConfigCli, its main) of a console script."""
    from bench import ablate, quality
    from bench import cli as bench_cli
    from edge import cli as edge_cli
    from edge.config import CalibrateConfig, RunConfig, config_cli
    from export import cli as export_cli
    from train import cli as train_cli
    from train import demo, evaluate
    return {"dcam-train": (train_cli.CLI, train_cli.main), "dcam-eval": (evaluate.CLI, evaluate.main),
            "dcam-demo": (demo.CLI, demo.main), "dcam-export": (export_cli.CLI, export_cli.main),
            "edge-run": (config_cli(RunConfig, "edge-run"), edge_cli.run_main),
            "edge-calibrate": (config_cli(CalibrateConfig, "edge-calibrate"), edge_cli.calibrate_main),
            "bench-latency": (bench_cli.CLI, bench_cli.main), "bench-quality": (quality.CLI, quality.main),
            "dcam-ablate": (ablate.CLI, ablate.main)}[name]


# script: (flags, the same as a TOML file, a flag overriding the file, check of the override,
#          a bad TOML line and what its error names)
SCRIPTS: dict[str, tuple[list[str], str, list[str], Callable[[Any], bool], str, str]] = {
    "dcam-train": (
        ["--nproc", "2", "--data", "d", "--method", "rd", "--epochs", "3", "--levels", "0", "1", "2",
         "--no-pretrained", "--rd-loss-mode", "flat", "--adam-betas", "0.4", "0.9", "--knn-bank-size", "64"],
        """
        nproc = 2
        data = "d"
        epochs = 3
        adam-betas = [0.4, 0.9]
        knn_bank_size = 64
        [model]
        method = "rd"
        levels = [0, 1, 2]
        pretrained = false
        [model.rd]
        loss_mode = "flat"
        """,
        ["--epochs", "5"], lambda c: c.train.epochs == 5 and c.train.model.rd.loss_mode == "flat",
        "[model]\nmethd = 'rd'", "[model] methd: unknown key"),
    "dcam-eval": (
        ["--run", "r", "--data", "d", "--batch-size", "4", "--json", "o.json", "--blur-sigma", "2"],
        """
        run = "r"
        data = "d"
        batch_size = 4
        json = "o.json"
        blur-sigma = 2
        """,
        ["--batch-size", "2"], lambda c: c.batch_size == 2 and c.json == "o.json",
        "batch_size = 'four'", "batch_size: expected an integer, got 'four'"),
    "dcam-demo": (
        ["--out", "x", "--train-seconds", "5", "--seed", "3"],
        """
        out = "x"
        train_seconds = 5
        seed = 3
        """,
        ["--seed", "4"], lambda c: c.seed == 4 and c.train_seconds == 5.0,
        "train-secs = 5", "train-secs: unknown key"),
    "dcam-export": (
        ["--run", "r", "--out", "o", "--formats", "onnx,tflite", "--precisions", "fp32", "--threshold-mode", "f1",
         "--no-progress", "--allow-accuracy-drop", "--target-fpr", "0.01"],
        """
        run = "r"
        out = "o"
        formats = ["onnx", "tflite"]
        precisions = "fp32"
        threshold_mode = "f1"
        progress = false
        allow_accuracy_drop = true
        target_fpr = 0.01
        """,
        ["--formats", "onnx"], lambda c: c.formats == ("onnx",) and c.precisions == ("fp32",),
        "threshold_mode = 'max'", "threshold_mode: expected one of fpr, f1, got 'max'"),
    "edge-run": (
        ["--model", "m.onnx", "--camera", "0", "--raise-k", "3", "--status-port", "9811", "--snapshot-dir", "/tmp/s",
         "--webhook-url", "http://h/x", "--webhook-spool-dir", "/tmp/q", "--mqtt-backoff", "2",
         "--webhook-header", "A: b", "--command", "notify {score}"],
        """
        model = "m.onnx"
        [source]
        camera = 0
        [decision]
        raise_k = 3
        [status]
        port = 9811
        [sinks]
        snapshot_dir = "/tmp/s"
        webhook_url = "http://h/x"
        webhook_spool_dir = "/tmp/q"
        webhook_headers = ["A: b"]
        command = ["notify", "{score}"]
        [sinks.mqtt]
        backoff = 2.0
        """,
        ["--source", "v.avi", "--mqtt-backoff", "3"],
        lambda c: c.source.source == "v.avi" and c.source.camera is None and c.sinks.mqtt.backoff == 3.0,
        "[sinks]\nmqtt_port = '1883'", "[sinks] mqtt_port: expected an integer, got '1883'"),
    "edge-calibrate": (
        ["--model", "m.onnx", "--source", "imgs", "--frames", "10", "--target-fpr", "0.01", "--category", "a",
         "--new-category"],
        """
        model = "m.onnx"
        frames = 10
        target-fpr = 0.01
        category = "a"
        new_category = true
        [source]
        source = "imgs"
        """,
        ["--frames", "20"], lambda c: c.frames == 20 and c.source.source == "imgs",
        "frames = 1.5", "frames: expected an integer, got 1.5"),
    "bench-latency": (
        ["--model", "a.onnx", "b.onnx", "--threads", "1,2", "--device", "cpu", "--runs", "3", "--no-eager",
         "--gemm-sizes", "0"],
        """
        model = ["a.onnx", "b.onnx"]
        threads = [1, 2]
        device = "cpu"
        runs = 3
        eager = false
        gemm_sizes = "0"
        """,
        ["--threads", "1"], lambda c: c.threads == (1,) and c.runs == 3 and c.gemm_sizes == (),
        "threads = 'one'", "threads: expected an integer, got 'one'"),
    "bench-quality": (
        ["--data", "a", "b", "--epochs", "5,10", "--per-category", "--extra", "--lr", "0.1"],
        """
        data = ["a", "b"]
        epochs = [5, 10]
        per_category = true
        extra = ["--lr", "0.1"]
        """,
        ["--epochs", "20"], lambda c: c.epochs == (20,) and c.data == ["a", "b"],
        "per_category = 'yes'", "per_category: expected true or false, got 'yes'"),
    "dcam-ablate": (
        ["--table", "dcam-4", "--data", "a", "--epochs", "3", "--extra", "--lr", "0.1"],
        """
        table = "dcam-4"
        data = "a"
        epochs = 3
        extra = ["--lr", "0.1"]
        """,
        ["--epochs", "5"], lambda c: c.epochs == 5 and c.table == "dcam-4",
        "epochs = 'three'", "epochs: expected an integer, got 'three'"),
}


def test_every_console_script_is_covered() -> None:
    import tomllib
    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_config_file_equals_flags_and_a_flag_overrides_it(name: str, tmp_path: Path) -> None:
    flags, text, override, overridden, _bad, _needle = SCRIPTS[name]
    cli = _script(name)[0]
    assert "--config" in cli.build_parser().format_help()
    path = _toml(tmp_path, text)
    assert cli.parse(["--config", path]) == cli.parse(flags)
    assert overridden(cli.parse(["--config", path, *override]))


@pytest.mark.parametrize("name", SCRIPTS)
def test_bad_config_file_is_one_error_line_naming_the_key(name: str, tmp_path: Path, capsys) -> None:
    *_, bad, needle = SCRIPTS[name]
    path = _toml(tmp_path, bad + "\n")
    assert _script(name)[1](["--config", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config {path}: ") and needle in err, err


@pytest.mark.parametrize("name, argv, needle", [
    ("dcam-train", ["--data", "d", "--epochs", "x"], "--epochs: expected an integer, got 'x'"),
    ("dcam-eval", ["--run", "r", "--data", "d", "--blur-sigma", "wide"], "--blur-sigma: expected a number"),
    ("dcam-demo", ["--image-size", "big"], "--image-size: expected an integer, got 'big'"),
    ("dcam-export", ["--run", "r", "--out", "o", "--tflite-int8", "int4"], "--tflite-int8: expected one of static"),
    ("edge-run", ["--camera", "zero"], "--camera: expected an integer, got 'zero'"),
    ("edge-calibrate", ["--frames"], "argument --frames: expected one argument"),
    ("bench-latency", ["--model", "a.onnx", "--runs", "many"], "--runs: expected an integer, got 'many'"),
    ("bench-quality", ["--data", "a", "--epochs", "5,x"], "--epochs: expected an integer, got 'x'"),
])
def test_bad_flag_is_one_error_line_naming_the_flag(name: str, argv: list[str], needle: str, capsys) -> None:
    assert _script(name)[1](argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err


@pytest.mark.parametrize("module, flags, text", [
    ("bench.soak", ["--frames", "5", "--frame-size", "64x48", "--with-webhook"],
     "frames = 5\nframe_size = '64x48'\nwith_webhook = true\n"),
    ("train.synthetic", ["--out", "o", "--categories", "2", "--overwrite"],
     "out = 'o'\ncategories = '2'\noverwrite = true\n"),
    ("bench.photoset", ["--out", "o", "--size", "64"], "out = 'o'\nsize = 64\n"),
])
def test_python_m_tools_take_the_same_config_file(module: str, flags: list[str], text: str, tmp_path: Path) -> None:
    import importlib
    cli = importlib.import_module(module).CLI
    assert cli.parse(["--config", _toml(tmp_path, text)]) == cli.parse(flags)

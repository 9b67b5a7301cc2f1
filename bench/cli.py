"""``bench-latency``: latency, throughput, memory and accuracy of exported model files, against eager
PyTorch and the machine's measured GEMM peak.

    bench-latency --models DIR [--threads 1,2] [--runs 200] [--warmup 20] [--data DIR]
                  [--json OUT.json] [--markdown OUT.md]
    bench-latency --model dcam.onnx dcam.int8.xml ... [--run RUN_DIR]
    bench-latency --model dcam.onnx dcam.int8.onnx --device cpu,cuda,tensorrt   # one row per file × device

Devices (``--device``, edge.devices): every file runs on each listed device its engine supports
(cpu; cuda/tensorrt for .onnx; gpu/npu for .xml; auto = what edge-run --device auto would pick);
a device this machine lacks becomes a failed row saying what to install.

Runs on the edge install (numpy, OpenCV, one engine; no torch). When torch is importable the same
run also times the paper-style eager pipeline (``bench.eager``) per architecture and thread count,
and every file's speed-up over it is a ratio of two medians from this one run, measured interleaved
(``bench.runner``). Every model runs in its own process (``bench.worker``): peak RSS per model, no
state shared between engines, and a file that fails to load or crashes becomes a failed row.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import report
from bench.files import (
    BenchError,
    ModelFile,
    dataset_samples,
    describe_file,
    file_devices,
    read_run_architecture,
    resolve_models,
    synthetic_frame,
)
from bench.gemm import ENGINE_GEMM
from bench.rows import build_rows
from bench.runner import E2E_COMMANDS, Job, run_group, run_once
from edge.cliconfig import ConfigCli, option, run_cli
from edge.cpu import cpu_flags, cpu_info
from edge.devices import DEVICE_CHOICES, parse_devices
from edge.formats import FORMATS

Arch = tuple[str, str, int]  # (method, backbone, image size): what an eager baseline is built from


@dataclass
class BenchConfig:
    """bench-latency options (one field per flag and ``--config`` key)."""

    model: list[str] = option([], "model files (.onnx, .xml, .tflite)", metavar="FILE")
    models: str | None = option(None, "bench every .onnx/.xml/.tflite under DIR (recursive)", metavar="DIR")
    threads: tuple[int, ...] = option((1, 2), "comma-separated thread counts", split=",")
    # edge.devices names; each file runs on those its engine supports
    devices: tuple[str, ...] = option(("cpu",), f"comma-separated devices of {', '.join(DEVICE_CHOICES)}: each file "
                                      "runs on those its engine supports (cuda/tensorrt: .onnx; gpu/npu: .xml)",
                                      flag="--device", split=parse_devices)
    # TensorRT engine cache (default: edge.devices.default_trt_cache_dir())
    trt_cache_dir: str | None = option(None, "TensorRT engine cache (default: $STATE_DIRECTORY/trt-cache, else "
                                             "$XDG_CACHE_HOME/dcam-edge/trt-cache); the first run on a model builds "
                                             "its engine (minutes)", metavar="DIR")
    runs: int = option(200, "timed inference runs per file × threads")
    warmup: int = option(20, "untimed runs before timing")
    # the runs of a comparison group are interleaved in this many rounds (bench.runner)
    rounds: int = option(10, "interleave the models of one comparison in this many rounds (fair ratios under "
                             "drifting load)")
    e2e_runs: int = option(50, "frames timed end to end (decode + preprocess + inference); 0 skips")
    data: str | None = option(None, "MVTec-layout dataset: image/pixel AUROC on its test split", metavar="DIR")
    categories: str | None = option(None, "comma-separated categories of --data (default: the manifest's)")
    run: list[str] = option([], "dcam-train run dirs: eager baseline with trained weights (else random weights, "
                                "same latency)", metavar="RUN_DIR")
    eager: bool = option(True, "time the eager torch pipeline when torch is importable")
    # M = K = N of the peak micro-benchmark (best counts); () skips
    gemm_sizes: tuple[int, ...] = option((512, 1024), "M=K=N of the peak GEMM micro-benchmark, best size counts; "
                                                      "0 skips", split=",")
    gemm_runs: int = option(10, "timed GEMM repetitions")
    # side of the generated frame used for E2E without --data (MVTec images are ~1024²)
    frame_size: int = option(1024, "side of the generated JPEG frame for end-to-end timing without --data")
    json: str | None = option(None, "write the rows as a JSON list", metavar="OUT")
    markdown: str | None = option(None, "write the Markdown report", metavar="OUT")
    plot: str | None = option(None, "write a PNG of latency vs image AUROC per file (needs matplotlib)", metavar="OUT")

    def __post_init__(self) -> None:
        self.threads = tuple(dict.fromkeys(self.threads))  # duplicates dropped, order kept
        if self.gemm_sizes == (0,):  # "--gemm-sizes 0": no peak micro-benchmark
            self.gemm_sizes = ()
        if self.plot and importlib.util.find_spec("matplotlib") is None:  # fail before minutes of timing
            raise BenchError("--plot: needs matplotlib (pip install matplotlib)")
        if bool(self.model) == bool(self.models):
            raise BenchError("give either --model FILE [FILE ...] or --models DIR")
        if not self.devices or any(d not in DEVICE_CHOICES for d in self.devices):
            raise BenchError(f"--device: expected some of {', '.join(DEVICE_CHOICES)}, got {self.devices}")
        if not self.threads or any(t < 1 for t in self.threads):
            raise BenchError(f"--threads: expected positive thread counts, got {self.threads}")
        if any(n < 1 for n in self.gemm_sizes):
            raise BenchError(f"--gemm-sizes: expected positive sizes (or 0 to skip), got {self.gemm_sizes}")
        for name, low in (("runs", 1), ("warmup", 0), ("rounds", 1), ("e2e_runs", 0), ("gemm_runs", 1),
                          ("frame_size", 32)):
            if getattr(self, name) < low:
                raise BenchError(f"--{name.replace('_', '-')}: expected an integer ≥ {low}, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What to run, in order: per thread count the GEMM peaks and the comparison groups, then accuracy."""

    gemm: dict[int, Job]
    groups: list[tuple[int, list[Job]]]
    accuracy: list[Job]
    skipped: list[str] = field(default_factory=list)  # "file: devices" its engine does not support

    @property
    def units(self) -> int:
        return (sum(j.units for j in self.gemm.values()) + sum(j.units for _, g in self.groups for j in g)
                + sum(j.units for j in self.accuracy))


def eager_targets_for(cfg: BenchConfig, files: Sequence[ModelFile]) -> dict[Arch, dict[str, Any]]:
    """One eager baseline per architecture among the files (trained weights where --run matches)."""
    runs = {read_run_architecture(r): r for r in cfg.run}
    if not cfg.eager or importlib.util.find_spec("torch") is None:
        return {}
    targets: dict[Arch, dict[str, Any]] = {}
    for f in files:
        arch = f.architecture
        if arch is not None and arch not in targets:
            run = runs.get(arch)
            targets[arch] = {"kind": "eager", "method": arch[0], "backbone": arch[1], "image_size": arch[2],
                             "run": run, "spec": f.spec}
    unmatched = [r for a, r in runs.items() if a not in targets]
    if unmatched:
        raise BenchError(f"--run {unmatched[0]}: no model file has its method/backbone/image size "
                         f"{read_run_architecture(unmatched[0])}")
    return targets


def plan_jobs(cfg: BenchConfig, files: Sequence[ModelFile], eager_targets: dict[Arch, dict[str, Any]],
              frames: list[str], samples: list[dict[str, Any]] | None) -> Plan:
    """Per thread count: GEMM peaks, then per architecture one group = its eager baseline + its files."""
    backends = _gemm_backends(files, eager_targets)
    by_arch: dict[Arch | None, list[ModelFile]] = {}
    for f in files:
        by_arch.setdefault(f.architecture if f.architecture in eager_targets else None, []).append(f)
    devices = {str(f.path): file_devices(f.format, cfg.devices) for f in files}
    plan = Plan({}, [], [], skipped=_unsupported_devices(cfg, files, devices))
    for t in cfg.threads:
        if cfg.gemm_sizes:
            plan.gemm[t] = Job("gemm", {"backends": backends, "sizes": cfg.gemm_sizes, "runs": cfg.gemm_runs},
                               len(backends) * len(cfg.gemm_sizes) * (cfg.gemm_runs + 2), ("gemm", t))
        for arch, members in by_arch.items():
            plan.groups.append((t, _latency_group(cfg, arch, members, eager_targets, devices, frames, t)))
    if samples is not None:
        plan.accuracy = _accuracy_jobs(cfg, files, eager_targets, devices, samples)
    return plan


def _gemm_backends(files: Sequence[ModelFile], eager_targets: dict[Arch, dict[str, Any]]) -> list[tuple[str, str]]:
    """The (backend, precision) GEMM peaks the files' engines (and the eager baselines) are compared with."""
    return sorted({ENGINE_GEMM[(FORMATS[f.format].engine, f.precision)] for f in files
                   if (FORMATS[f.format].engine, f.precision) in ENGINE_GEMM} | {("numpy", "fp32")}
                  # bf16 is no file's precision; measured as a reference limit (OpenVINO's default on AMX CPUs).
                  | ({("torch", "fp32"), ("torch", "bf16")} if eager_targets else set()))


def _unsupported_devices(cfg: BenchConfig, files: Sequence[ModelFile], devices: dict[str, list[str]]) -> list[str]:
    """One note per file whose engine cannot run on some of the requested devices."""
    notes = []
    for f in files:
        unsupported = [d for d in cfg.devices if d not in devices[str(f.path)]]
        if unsupported:
            notes.append(f"{f.label}: not run on {', '.join(unsupported)} ({FORMATS[f.format].engine} "
                         f"does not support it)")
    return notes


def _file_target(cfg: BenchConfig, f: ModelFile, device: str) -> dict[str, Any]:
    return {"kind": "file", "path": str(f.path), "device": device, "trt_cache_dir": cfg.trt_cache_dir}


def _latency_group(cfg: BenchConfig, arch: Arch | None, members: list[ModelFile],
                   eager_targets: dict[Arch, dict[str, Any]], devices: dict[str, list[str]], frames: list[str],
                   threads: int) -> list[Job]:
    """One comparison group at ``threads``: the architecture's eager baseline (if any), then its files per device."""
    latency = {"warmup": cfg.warmup, "frames": frames}
    units = cfg.runs + len(E2E_COMMANDS) * cfg.e2e_runs
    group = [Job("latency", {**latency, "target": eager_targets[arch], "spec": eager_targets[arch]["spec"]},
                 units, ("eager", arch, threads))] if arch is not None else []
    group += [Job("latency", {**latency, "target": _file_target(cfg, f, d), "spec": f.spec},
                  units, ("file", str(f.path), d, threads)) for f in members for d in devices[str(f.path)]]
    return group


def _accuracy_jobs(cfg: BenchConfig, files: Sequence[ModelFile], eager_targets: dict[Arch, dict[str, Any]],
                   devices: dict[str, list[str]], samples: list[dict[str, Any]]) -> list[Job]:
    """Accuracy of every file with a manifest on each device, and of each trained eager baseline."""
    jobs = []
    for f in files:
        if f.spec is not None:  # without a manifest the normalisation is unknown: no accuracy
            jobs += [Job("accuracy", {"target": _file_target(cfg, f, d), "spec": f.spec, "samples": samples},
                         len(samples), ("accuracy", str(f.path), d)) for d in devices[str(f.path)]]
    for arch, eager in eager_targets.items():
        if eager.get("run"):  # random weights have no meaningful accuracy
            jobs.append(Job("accuracy", {"target": eager, "spec": eager["spec"], "samples": samples},
                            len(samples), ("accuracy", arch)))
    return jobs


def execute(cfg: BenchConfig, plan: Plan, workdir: Path) -> dict[tuple[Any, ...], dict[str, Any]]:
    results: dict[tuple[Any, ...], dict[str, Any]] = {}
    accuracy_threads = max(cfg.threads)  # accuracy does not depend on threads; use the fastest setting
    with tqdm(total=plan.units, desc="bench-latency", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
        for t in cfg.threads:
            if t in plan.gemm:
                bar.set_postfix_str(f"GEMM peak, {t} thr", refresh=True)
                results[("gemm", t)] = run_once(plan.gemm[t], t, workdir, bar)
            for threads, group in plan.groups:
                if threads == t:
                    names = [(Path(str(j.key[1])).name + ("" if j.key[2] == "cpu" else f" on {j.key[2]}"))
                             if j.key[0] == "file" else "eager" for j in group]
                    bar.set_postfix_str(f"{', '.join(names)}, {t} thr", refresh=True)
                    results.update(run_group(group, t, cfg.runs, cfg.e2e_runs, cfg.rounds, workdir, bar))
        for job in plan.accuracy:
            what = "eager torch" if isinstance(job.key[1], tuple) else Path(job.key[1]).name + (
                "" if job.key[2] == "cpu" else f" on {job.key[2]}")
            bar.set_postfix_str(f"accuracy: {what}", refresh=True)
            results[job.key] = run_once(job, accuracy_threads, workdir, bar)
    return results


# ------------------------------------------------------------------------------------------- meta
def machine_meta() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version
    info = cpu_info()
    # x86: "model name"; Raspberry Pi: "Model" (board) / "Hardware"; else what platform knows.
    cpu = info.get("model name") or (info.get("model") if not info.get("model", "").isdigit() else "") \
        or info.get("hardware") or platform.processor() or platform.machine()
    flags = cpu_flags(info)
    interesting = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                   "asimd", "asimddp", "i8mm", "bf16", "sve")
    versions = []
    # Every format's runtime (edge.formats), LiteRT's older fallback, then what preprocessing and eager use.
    for dist in (*dict.fromkeys(f.runtime_package for f in FORMATS.values()), "tflite-runtime", "numpy",
                 "opencv-python-headless", "torch"):
        try:
            versions.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": ", ".join(f for f in interesting if f in flags) or "?",
            "software": f"Python {platform.python_version()}; " + ", ".join(versions)}


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


# -------------------------------------------------------------------------------------------- CLI
CLI = ConfigCli(BenchConfig, "bench-latency", __doc__.split("\n\n")[0])


def bench(cfg: BenchConfig, command: str = "bench-latency") -> tuple[list[dict[str, Any]], str]:
    """Run the whole benchmark; returns (rows, markdown report)."""
    paths = resolve_models(cfg.model, cfg.models)
    files = [describe_file(p, paths) for p in paths]
    eager_targets = eager_targets_for(cfg, files)
    samples = dataset_samples(cfg.data, cfg.categories, files) if cfg.data else None
    meta: dict[str, Any] = {**machine_meta(), "command": command, "load_before": _load(),
                            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = Path(tmp)
        frames = ([s["path"] for s in samples] if samples
                  else [str(synthetic_frame(workdir / "frame.jpg", cfg.frame_size))])
        meta["frames"] = (f"{len(frames)} test images of {cfg.data}" if samples
                          else f"one generated {cfg.frame_size}×{cfg.frame_size} JPEG (quality 95)")
        plan = plan_jobs(cfg, files, eager_targets, frames, samples)
        if not any(j.key[0] == "file" for _, g in plan.groups for j in g):
            raise BenchError(f"--device {','.join(cfg.devices)}: no model file's engine supports it ("
                             + "; ".join(plan.skipped) + ")")
        results = execute(cfg, plan, workdir)
    rows = build_rows(files, results, eager_targets, {"runs": cfg.runs, "warmup": cfg.warmup, "rounds": cfg.rounds},
                      os.cpu_count())
    meta["load_after"] = _load()
    meta["skipped"] = plan.skipped
    meta["settings"] = (f"devices {','.join(cfg.devices)}; threads {','.join(map(str, cfg.threads))}; "
                        f"{cfg.runs} timed runs per model after "
                        f"{cfg.warmup} warm-up, interleaved in {cfg.rounds} rounds; {cfg.e2e_runs} end-to-end frames; "
                        + (f"GEMM peak: best of {', '.join(f'{n}³' for n in cfg.gemm_sizes)}, median of {cfg.gemm_runs}"
                           if cfg.gemm_sizes else "no GEMM peak"))
    eager_rows = {r["model"]: r for r in rows if r["engine"] == "torch-eager"}
    meta["eager"] = ("; ".join(f"{r['label']}: {r.get('notes')}" for r in eager_rows.values())
                     or ("not run: torch is not installed" if cfg.eager else "not run (--no-eager)"))
    meta["gemm"] = [g for k, r in results.items() if k[0] == "gemm" and r.get("status") == "ok" for g in r["gemm"]]
    meta["bandwidth"] = {key[1]: r["bandwidth"] for key, r in results.items()
                         if key[0] == "gemm" and r.get("status") == "ok" and r.get("bandwidth")}
    meta["gemm_notes"] = {f"{k} ({key[1]} thr)": v for key, r in results.items() if key[0] == "gemm"
                          for k, v in (r.get("notes") or {}).items()}
    return rows, report.render(rows, meta)


def _bench(args: list[str]) -> int:
    cfg = CLI.parse(args)
    rows, markdown = bench(cfg, "bench-latency " + shlex.join(args))
    print(markdown)
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(rows, indent=2) + "\n")
    if cfg.markdown:
        Path(cfg.markdown).write_text(markdown + "\n")
    if cfg.plot:
        from bench.tradeoff_plot import plot_tradeoff
        plot_tradeoff(rows, cfg.plot)
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"warning: {report.where(r)} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``bench-latency``: BenchError and the other bad-input ValueErrors → one error line, exit status 2."""
    return run_cli(lambda: _bench(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())

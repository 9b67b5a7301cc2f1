"""Drives ``bench.worker`` processes: one-shot jobs, and interleaved latency measurement of a comparison group.

A comparison group is everything whose ratio the report prints — the eager baseline of one architecture
and its exported files, at one thread count. All of them are loaded (one process each), then timed in
``rounds``: every round gives each model ``runs / rounds`` timed runs in turn (rotating who goes first),
each preceded by untimed runs (``ROUND_WARM`` / ``ROUND_WARM_MS``) that refill what the previous model evicted.
Load from other processes that comes and goes during the benchmark is therefore spread evenly over the group.
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench import cpuload
from bench.gemm import gemm_env
from bench.worker import CAMERA_FRAMES, MESSAGE_TAG

# Timed per --e2e-runs: image files end to end (decode + preprocess + inference), their decode alone, then decoded
# camera frames (frame → decision).
E2E_COMMANDS = ("e2e", "decode", *(f"frame_{name}" for name in CAMERA_FRAMES))

# Untimed runs at the start of each round — at least this many and this long — so that weights are back in
# cache, the engine's threads awake and the core clocked up after another model ran.
ROUND_WARM = 2
ROUND_WARM_MS = 50.0


@dataclass
class Job:
    """One worker process: ``kind`` latency | accuracy | gemm, its JSON payload, progress units, result key."""

    kind: str
    payload: dict[str, Any]
    units: int
    key: tuple[Any, ...]


def split_runs(total: int, rounds: int) -> list[int]:
    """``total`` runs over at most ``rounds`` rounds, as evenly as possible (no empty rounds)."""
    rounds = max(1, min(rounds, total)) if total > 0 else 0
    return [total // rounds + (1 if i < total % rounds else 0) for i in range(rounds)]


class Worker:
    """One ``python -m bench.worker`` process and its line protocol (see bench.worker)."""

    _ids: Iterator[int] = itertools.count()

    def __init__(self, job: Job, threads: int, workdir: Path, bar: tqdm) -> None:
        index = next(self._ids)
        job_path = workdir / f"job-{index}.json"
        job_path.write_text(json.dumps({"kind": job.kind, "threads": threads, **job.payload}))
        env = gemm_env(threads)
        # The worker must import this very package, also when running from a checkout.
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        self.bar = bar
        self._err = open(workdir / f"stderr-{index}.txt", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", str(job_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, env=env, bufsize=1)

    def _failure(self) -> dict[str, Any]:
        code = self.proc.wait()
        self._err.seek(0)
        tail = [ln for ln in self._err.read().strip().splitlines() if ln.strip()][-1:]
        return {"status": "failed", "error": f"worker exited with code {code}" + (f": {tail[0][:300]}" if tail else "")}

    def receive(self) -> dict[str, Any]:
        """The next reply; progress messages move the bar. A worker that died yields a failed reply."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith(MESSAGE_TAG):
                continue  # engine chatter on stdout
            message = json.loads(line[len(MESSAGE_TAG):])
            if message.pop("type") == "progress":
                self.bar.update(message["n"])
                continue
            return message
        return self._failure()

    def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._failure()
        return self.receive()

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # only our own child
            self.proc.wait()
        self._err.close()


def run_once(job: Job, threads: int, workdir: Path, bar: tqdm) -> dict[str, Any]:
    """An accuracy or GEMM job: start, collect its single reply, stop."""
    worker = Worker(job, threads, workdir, bar)
    try:
        return worker.receive()
    finally:
        worker.close()


def run_group(jobs: Sequence[Job], threads: int, runs: int, e2e_runs: int, rounds: int, workdir: Path,
              bar: tqdm) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Latency of every job of one comparison group, interleaved in rounds (module docstring)."""
    group = _GroupRun(jobs, threads, workdir, bar)
    group.start()
    schedule = [("infer", n) for n in split_runs(runs, rounds)] + [
        (cmd, n) for cmd in E2E_COMMANDS for n in split_runs(e2e_runs, rounds)]
    for r, (cmd, n) in enumerate(schedule):
        group.timed_round(r, cmd, n)
    group.finish()
    return group.results


class _GroupRun:
    """The workers of one comparison group and what they measured so far."""

    def __init__(self, jobs: Sequence[Job], threads: int, workdir: Path, bar: tqdm) -> None:
        self.bar = bar
        self.workers = {job.key: Worker(job, threads, workdir, bar) for job in jobs}
        self.units = {job.key: job.units for job in jobs}
        self.results: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.samples: dict[tuple[Any, ...], dict[str, list[float]]] = {}
        self.alive: list[tuple[Any, ...]] = []
        self.load: dict[tuple[Any, ...], list[float]] = {}  # [CPU s of other processes, wall s] over the timed runs

    def drop(self, key: tuple[Any, ...], reply: dict[str, Any]) -> None:
        """``reply`` is the job's result: stop its worker and count its remaining runs as done."""
        self.results[key] = reply
        self.workers[key].close()
        self.bar.update(self.units[key] - sum(len(v) for v in self.samples.get(key, {}).values()))
        if key in self.alive:
            self.alive.remove(key)

    def start(self) -> None:
        """Wait until each worker has loaded its model; a worker that could not is dropped with its reply."""
        for key, worker in self.workers.items():
            reply = worker.receive()
            if reply.get("status") == "ready":
                self.alive.append(key)
                self.samples[key] = {f"{cmd}_ms": [] for cmd in ("infer", *E2E_COMMANDS)}
                self.load[key] = [0.0, 0.0]
            else:
                self.drop(key, reply)

    def timed_round(self, r: int, cmd: str, n: int) -> None:
        """Round ``r``: ``n`` timed ``cmd`` runs per live model in turn, starting one further each round."""
        alive = self.alive
        order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
        for key in order:
            reply = self.workers[key].command({"cmd": cmd, "n": n, "warm": ROUND_WARM, "warm_ms": ROUND_WARM_MS})
            if "ms" not in reply:
                self.drop(key, reply)
                continue
            self.samples[key][f"{cmd}_ms"].extend(reply["ms"])
            if cmd == "infer" and reply.get("others"):
                other_s, wall_s = reply["others"]
                self.load[key][0] += other_s
                self.load[key][1] += wall_s
            self.bar.update(n)

    def finish(self) -> None:
        """Collect each live worker's result with its samples and the other processes' CPU load."""
        for key in list(self.alive):
            reply = self.workers[key].command({"cmd": "finish"})
            if reply.get("status") == "ok":
                reply.update(self.samples[key], other_cpu_cores=cpuload.other_cores(*self.load[key]))
            self.drop(key, reply)

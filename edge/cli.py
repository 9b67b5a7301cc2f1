"""Console entry points: ``edge-run`` (run_main) and ``edge-calibrate`` (calibrate_main).

Also runnable without installation: ``python -m edge.cli run ...`` / ``python -m edge.cli calibrate ...``.
Bad input (missing/corrupt model, sha256 mismatch, unknown extension, a camera that never
opens, invalid flags) → ``error: <message>`` on stderr and exit status 2, no traceback.
SIGTERM/SIGINT stop the loop cleanly (sinks flushed, last line written) with exit status 0.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from edge.cliconfig import run_cli
from edge.config import CalibrateConfig, RunConfig, parse_config
from edge.jsonsafe import json_safe

log = logging.getLogger("edge.cli")


def _setup_logging(level: str) -> None:
    lvl = getattr(logging, str(level).upper(), None)
    if not isinstance(lvl, int):
        raise ValueError(f"--log-level {level!r}: expected DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(level=lvl, stream=sys.stderr, format="edge: %(levelname)s %(message)s", force=True)


class _StopOnSignal:
    """SIGTERM/SIGINT → set the stop event; a second signal restores the default (forced) behaviour."""

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, _frame: Any) -> None:
        if self.stop_event.is_set():
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            return
        log.info("%s received: stopping after the current frame", signal.Signals(signum).name)
        self.stop_event.set()

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def run_main(argv: Sequence[str] | None = None) -> int:
    """``edge-run``: score frames with an exported model; JSON lines to stdout or --jsonl."""
    def body() -> int:
        from edge.runner import run
        cfg: RunConfig = parse_config(RunConfig, argv, "edge-run", run_main.__doc__ or "")
        _setup_logging(cfg.log_level)
        stop = threading.Event()
        with _StopOnSignal(stop):
            summary = run(cfg, stop_event=stop)
        log.info("summary %s", json.dumps(json_safe({k: v for k, v in summary.items() if k != "events"})))
        return 0
    return run_cli(body)


def _number(x: float | None) -> str:
    return "none" if x is None else f"{x:.6g}"


def calibrate_main(argv: Sequence[str] | None = None) -> int:
    """``edge-calibrate``: score known-good frames and rewrite the manifest threshold (backup kept)."""
    def body() -> int:
        from edge.runner import calibrate
        cfg: CalibrateConfig = parse_config(CalibrateConfig, argv, "edge-calibrate", calibrate_main.__doc__ or "")
        _setup_logging(cfg.log_level)
        stop = threading.Event()
        with _StopOnSignal(stop):
            summary = calibrate(cfg, stop_event=stop)
        # Printed, not logged: the operator must see what changed even with --log-level WARNING.
        print(f"threshold{f' [{cfg.category}]' if cfg.category else ''}: {_number(summary['old_threshold'])} → "
              f"{_number(summary['threshold'])} (mode {summary['mode']}, fit {summary['fit']}, "
              f"{summary['frames']} frames, target FPR {cfg.target_fpr:g}); backup {summary['backup']}",
              file=sys.stderr)
        if "warning" in summary["statistics"]:
            log.warning("%s", summary["statistics"]["warning"])
        print(json.dumps(json_safe(summary), allow_nan=False))
        return 0
    return run_cli(body)


COMMANDS = {"run": run_main, "calibrate": calibrate_main}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edge.cli {run,calibrate} ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m edge.cli {{{','.join(COMMANDS)}}} [options]  (--help after the command)",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""GPIO sink: drive an output pin on alarm (gpiozero, optional extra `dcam-edge[gpio]`, Raspberry Pi).

mode 'pulse': the pin is on for `pulse_s` per raise event (a stack light or PLC input that latches);
mode 'hold': on from raise until clear (clear events are always consumed in this mode).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .base import Sink
from .config import SinkConfig, SinkConfigError


def _import_gpiozero() -> Any:
    try:
        import gpiozero
    except ImportError:
        raise SinkConfigError("--gpio-pin / [sinks] gpio_pin: the GPIO sink needs gpiozero (Raspberry Pi only); "
                              "install it with: pip install 'dcam-edge[gpio]' (and lgpio, or python3-lgpio from apt)"
                              ) from None
    return gpiozero


class GpioSink(Sink):
    """One DigitalOutputDevice; `pin_factory` injects gpiozero's MockFactory in tests."""

    kind = "gpio"

    def __init__(self, pin: int, *, mode: str = "pulse", pulse_s: float = 1.0, active_high: bool = True,
                 pin_factory: Any = None, **base: Any) -> None:
        super().__init__(**base)
        gpiozero = _import_gpiozero()
        self._mode = mode
        self._pulse_s = pulse_s
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpiozero warns per pin library it falls back from
                self._device = gpiozero.DigitalOutputDevice(pin, active_high=active_high, initial_value=False,
                                                            pin_factory=pin_factory)
        except Exception as exc:
            raise SinkConfigError(
                f"--gpio-pin / [sinks] gpio_pin: cannot open GPIO {pin} as an output ({type(exc).__name__}: {exc}); "
                "GPIO output needs a Raspberry Pi with a gpiozero pin library (lgpio) and the service user in "
                "group 'gpio'") from None

    @classmethod
    def from_config(cls, cfg: SinkConfig, metrics: Any = None, pin_factory: Any = None) -> GpioSink:
        assert cfg.gpio_pin is not None
        return cls(cfg.gpio_pin, mode=cfg.gpio_mode, pulse_s=cfg.gpio_pulse_s, active_high=cfg.gpio_active_high,
                   pin_factory=pin_factory, queue_size=cfg.sink_queue_size, on_clear=cfg.on_clear, metrics=metrics)

    @property
    def device(self) -> Any:
        return self._device

    def wants(self, event: dict[str, Any]) -> bool:
        return super().wants(event) or (self._mode == "hold" and event.get("event") == "clear")

    def process(self, event: dict[str, Any], frame_bgr: np.ndarray | None, overlay_bgr: np.ndarray | None) -> None:
        kind = event.get("event")
        if kind == "raise":
            if self._mode == "hold":
                self._device.on()
            else:  # gpiozero's background thread switches it off again
                self._device.blink(on_time=self._pulse_s, off_time=0, n=1, background=True)
        elif kind == "clear" and self._mode == "hold":
            self._device.off()

    def _shutdown(self, timeout: float) -> None:
        try:
            self._device.off()  # a stopped detector must not leave the alarm light on
        finally:
            self._device.close()

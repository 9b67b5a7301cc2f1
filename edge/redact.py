"""Credential redaction for every text the runtime shows: logs, the summary, errors, /status, /metrics, alarms."""
from __future__ import annotations

import re

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_credentials(text: str) -> str:
    """rtsp://user:pass@host/… → rtsp://***@host/… (camera passwords must not reach logs, webhooks, MQTT)."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)

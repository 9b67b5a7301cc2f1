"""Remote sink delivery against a REAL mosquitto broker (started per test on a free 127.0.0.1 port).

Covers the durable outbox of the MQTT sink: broker up (every alarm reaches a subscriber, counters
delivered == raised, no warning on a clean exit), broker down at start, broker down at exit +
restart on the same outbox (sink and edge-run), wrong password ("not authorized", counted as
failed, alarm stays queued), untrusted TLS certificate ("certificate verify failed") and a CA file
+ client certificate.  Skipped, with the reason, where the `mosquitto` binary is not installed.
Only 127.0.0.1 is used; every wait is bounded.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.sinks import DeliveryOptions, SinkConfig, build_sinks, close_sinks
from edge.sinks.base import alarm_id

pytest.importorskip("paho.mqtt.client", reason="the MQTT sink needs paho-mqtt (pip install 'dcam-edge[mqtt]')")
import paho.mqtt.client as mqtt  # noqa: E402

from tests.conftest import wait_until  # noqa: E402

TOPIC = "test/line1/alarm"
# Debian puts the broker in /usr/sbin, which a non-root PATH may lack.
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin:/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/sbin:/sbin")
FAST = dict(mqtt_topic=TOPIC)
FAST_DELIVERY = dict(timeout=2.0, backoff=0.05, backoff_max=0.2)




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_event(frame: int, event: str = "raise") -> dict:
    return {"frame": frame, "time": 1_700_000_000.0 + frame, "score": 0.9, "threshold": 0.5, "alarm": True,
            "event": event, "latency_ms": 3.0, "path": f"cam0/{frame}", "category": "bottle", "model": "m.onnx"}


def outbox_rows(spool: Path, sink: str = "mqtt") -> list[tuple[str, str]]:
    """(id, state) rows of one sink, read straight from the database (independent of the sink code)."""
    db = spool / "outbox.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("SELECT id, state FROM outbox WHERE sink = ? ORDER BY seq", (sink,)).fetchall()


# ---- the broker -------------------------------------------------------------------------------------------

class Broker:
    """mosquitto -c <conf> on 127.0.0.1:<port> in a temp dir; stop() / start() again on the same port."""

    def __init__(self, directory: Path, port: int, users: dict[str, str] | None = None,
                 tls: dict[str, str] | None = None) -> None:
        self.dir, self.port = directory, port
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {port} 127.0.0.1", "persistence true", f"persistence_location {self.dir}/",
                 "autosave_interval 1"]
        if os.geteuid() == 0:
            lines.append("user root")  # else mosquitto drops to 'mosquitto', who cannot read the 0700 temp dir
        if users:
            passwd = self.dir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run([MOSQUITTO_PASSWD, "-b"] + (["-c"] if i == 0 else []) + [str(passwd), user, password],
                               check=True, capture_output=True, timeout=30)
            lines += [f"password_file {passwd}", "allow_anonymous false"]
        else:
            lines.append("allow_anonymous true")
        for key, value in (tls or {}).items():
            lines.append(f"{key} {value}")
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: saves the persistent sessions, like a broker restart
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


@pytest.fixture
def broker_factory(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto binary not installed (apt-get install mosquitto); needed for the real-broker tests")
    brokers: list[Broker] = []

    def make(users: dict[str, str] | None = None, tls: dict[str, str] | None = None) -> Broker:
        if users and MOSQUITTO_PASSWD is None:
            pytest.skip("mosquitto_passwd not installed (comes with the mosquitto package)")
        broker = Broker(tmp_path / f"broker{len(brokers)}", free_port(), users, tls)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


class Subscriber:
    """QoS 1 subscriber with a persistent session: messages published while it is away are kept for it."""

    def __init__(self, port: int) -> None:
        self.received: list[dict] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}",
                                  clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(TOPIC, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        assert subscribed.wait(10), "subscriber: no SUBACK"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.received.append(json.loads(message.payload))

    def ids(self) -> list[str]:
        """Alarm ids in arrival order, deduplicated on id — what every receiver must do (at least once:
        e.g. a broker stopped before its subscriber's PUBACK redelivers that message after the restart)."""
        with self._lock:
            return list(dict.fromkeys(m["id"] for m in self.received))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(autouse=True)
def _sink_logs(caplog):
    caplog.set_level(logging.INFO, logger="edge.sinks")


def mqtt_config(broker: Broker, spool: Path, **kw) -> SinkConfig:
    return SinkConfig(mqtt_host="127.0.0.1", mqtt_port=broker.port,
                      mqtt=DeliveryOptions(spool_dir=str(spool), **FAST_DELIVERY), **{**FAST, **kw})


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- tests ---------------------------------------------------------------------------------------------------

def test_mqtt_broker_up_every_alarm_delivered_and_counted(broker_factory, tmp_path, caplog):
    broker = broker_factory().start()
    sub = Subscriber(broker.port)
    spool = tmp_path / "outbox"
    try:
        sinks = build_sinks(mqtt_config(broker, spool))
        sink = sinks[0]
        for i in range(17):
            sink.handle(make_event(i))
            sink.handle(make_event(100 + i, None))  # plain frames are not published
        assert wait_until(lambda: len(sub.ids()) == 17, 10)
        assert wait_until(lambda: sink.stats()["delivered"] == 17, 5)
        close_sinks(sinks, 5)
    finally:
        sub.close()
    stats = sink.stats()
    assert stats["queued"] == stats["delivered"] == stats["handled"] == 17
    assert stats["failed"] == 0 and stats["backlog"] == 0
    assert sub.ids() == [alarm_id(make_event(i)) for i in range(17)]  # each once, in order
    assert [m["frame"] for m in sub.received] == list(range(17))
    assert outbox_rows(spool) == []
    assert warnings(caplog) == []  # a clean exit: no "reconnecting", no "still queued"


def test_mqtt_broker_down_at_start_delivers_once_it_is_up(broker_factory, tmp_path):
    broker = broker_factory().start()
    sub = Subscriber(broker.port)  # its persistent session keeps what is published while it reconnects
    broker.stop()
    spool = tmp_path / "outbox"
    try:
        sinks = build_sinks(mqtt_config(broker, spool))
        sink = sinks[0]
        for i in range(5):
            sink.handle(make_event(i))
        assert wait_until(lambda: len(outbox_rows(spool)) == 5 and sink.stats()["failed"] >= 1, 10)
        assert sink.stats()["delivered"] == 0 and sink.stats()["backlog"] == 5
        broker.start()
        assert wait_until(lambda: sink.stats()["delivered"] == 5, 10)
        assert wait_until(lambda: len(sub.ids()) == 5, 10)
        close_sinks(sinks, 5)
    finally:
        sub.close()
    assert sub.ids() == [alarm_id(make_event(i)) for i in range(5)]
    assert sink.stats()["backlog"] == 0 and outbox_rows(spool) == []


def test_mqtt_broker_down_at_exit_then_restart_delivers_everything(broker_factory, tmp_path, caplog):
    broker = broker_factory().start()
    sub = Subscriber(broker.port)
    spool = tmp_path / "outbox"
    try:
        first = build_sinks(mqtt_config(broker, spool))
        for i in range(3):
            first[0].handle(make_event(i))
        assert wait_until(lambda: first[0].stats()["delivered"] == 3, 10)
        broker.stop()
        for i in range(3, 7):
            first[0].handle(make_event(i))
        assert wait_until(lambda: len(outbox_rows(spool)) == 4 and first[0].stats()["failed"] >= 1, 10)
        caplog.clear()
        close_sinks(first, 2)  # "process stops" with 4 alarms the broker never confirmed
        stats = first[0].stats()
        assert (stats["queued"], stats["delivered"], stats["backlog"]) == (7, 3, 4) and stats["failed"] >= 1
        exit_warnings = warnings(caplog)
        assert any("4 alarm(s) still queued" in w and str(spool / "outbox.sqlite3") in w
                   and "next start" in w for w in exit_warnings), exit_warnings
        assert not any("reconnecting" in w for w in exit_warnings)
        assert [state for _, state in outbox_rows(spool)] == ["pending"] * 4

        broker.start()
        second = build_sinks(mqtt_config(broker, spool))  # "restart" on the same outbox
        second[0].handle(make_event(7))
        assert wait_until(lambda: second[0].stats()["delivered"] == 5, 10)
        assert wait_until(lambda: len(sub.ids()) == 8, 10)
        close_sinks(second, 5)
    finally:
        sub.close()
    stats = second[0].stats()
    assert (stats["queued"], stats["delivered"], stats["backlog"]) == (1, 5, 0)
    assert first[0].stats()["delivered"] + stats["delivered"] == 8  # every raised alarm, exactly as counted
    assert sub.ids() == [alarm_id(make_event(i)) for i in range(8)]  # in order, none lost, none twice
    assert outbox_rows(spool) == []


def test_mqtt_wrong_password_is_logged_counted_and_kept(broker_factory, tmp_path, caplog):
    broker = broker_factory(users={"edge": "right-password"}).start()
    spool = tmp_path / "outbox"
    sinks = build_sinks(mqtt_config(broker, spool, mqtt_username="edge", mqtt_password="wrong-password"))
    sinks[0].handle(make_event(1))
    assert wait_until(lambda: sinks[0].stats()["failed"] >= 1, 10)
    close_sinks(sinks, 2)
    stats = sinks[0].stats()
    assert stats["delivered"] == 0 and stats["backlog"] == 1 and stats["failed"] >= 1
    assert "not authorized" in caplog.text
    assert [state for _, state in outbox_rows(spool)] == ["pending"]  # stays queued for the next start
    # The operator fixes the password: the same outbox is delivered.
    fixed = build_sinks(mqtt_config(broker, spool, mqtt_username="edge", mqtt_password="right-password"))
    assert wait_until(lambda: fixed[0].stats()["delivered"] == 1, 10)
    close_sinks(fixed, 2)
    assert outbox_rows(spool) == [] and fixed[0].stats()["backlog"] == 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(d: Path) -> dict[str, Path]:
    """A test CA, a server certificate for IP 127.0.0.1 and a client certificate, all signed by the CA."""
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=dcam test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (d / f"{name}.ext").write_text(ext)
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def test_mqtt_tls_untrusted_certificate_then_ca_file_and_client_certificate(broker_factory, tmp_path, caplog):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (needed to make test certificates)")
    pki = _make_pki(tmp_path / "pki")
    broker = broker_factory(tls={"cafile": pki["ca_crt"], "certfile": pki["server_crt"],
                                 "keyfile": pki["server_key"], "require_certificate": "true"}).start()
    spool = tmp_path / "outbox"
    untrusted = build_sinks(mqtt_config(broker, spool, mqtt_tls=True))  # system CAs: the test CA is unknown
    untrusted[0].handle(make_event(1))
    assert wait_until(lambda: untrusted[0].stats()["failed"] >= 1, 10)
    close_sinks(untrusted, 2)
    assert "certificate verify failed" in caplog.text
    assert untrusted[0].stats()["backlog"] == 1 and untrusted[0].stats()["delivered"] == 0
    trusted = build_sinks(mqtt_config(broker, spool, mqtt_ca_file=str(pki["ca_crt"]),
                                      mqtt_certfile=str(pki["client_crt"]), mqtt_keyfile=str(pki["client_key"])))
    assert wait_until(lambda: trusted[0].stats()["delivered"] == 1, 10)
    close_sinks(trusted, 2)
    assert outbox_rows(spool) == []


def test_mqtt_bad_certificate_file_names_the_option(tmp_path):
    pytest.importorskip("paho.mqtt.client")
    from edge.sinks import SinkConfigError
    with pytest.raises(SinkConfigError, match="--mqtt-ca-file / \\[sinks\\] mqtt_ca_file"):
        build_sinks(SinkConfig(mqtt_host="127.0.0.1", mqtt=DeliveryOptions(spool_dir=str(tmp_path / "o")),
                               mqtt_ca_file=str(tmp_path / "missing.pem")))
    # Nothing was left locked: a good configuration on the same outbox starts.
    close_sinks(build_sinks(SinkConfig(mqtt_host="127.0.0.1", mqtt_port=free_port(),
                                       mqtt=DeliveryOptions(spool_dir=str(tmp_path / "o"), **FAST_DELIVERY),
                                       **FAST)), 1)


# ---- edge-run: the exit summary ---------------------------------------------------------------------------

def test_edge_run_summary_counts_queued_alarms_and_next_start_delivers_them(broker_factory, tmp_path, caplog):
    pytest.importorskip("onnx")
    from test_edge_runtime import make_tiny_onnx, write_tiny_manifest

    from edge.config import DecisionConfig, RunConfig, SourceConfig
    from edge.runner import run

    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    write_tiny_manifest(model)

    def images(name: str, values: list[int]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for i, v in enumerate(values):
            cv2.imwrite(str(d / f"img_{i:03d}.png"), np.full((20, 30, 3), v, np.uint8))
        return d

    broker = broker_factory().start()
    sub = Subscriber(broker.port)
    broker.stop()
    spool = tmp_path / "outbox"
    sinks = mqtt_config(broker, spool)
    decision = DecisionConfig(threshold=0.5, raise_k=1, raise_n=1, clear_m=1)  # every bright frame raises
    try:
        first = run(RunConfig(model=str(model), source=SourceConfig(source=str(images("a", [255, 127] * 3))),
                              decision=decision, sinks=sinks, sink_close_timeout=2.0, jsonl=str(tmp_path / "a.jsonl")))
        assert first["alarms"] == 3
        s = first["sinks"]["mqtt"]
        assert (s["queued"], s["delivered"], s["backlog"]) == (3, 0, 3) and s["failed"] >= 1
        assert any("3 alarm(s) still queued" in w and "outbox.sqlite3" in w for w in warnings(caplog))
        broker.start()
        second = run(RunConfig(model=str(model), source=SourceConfig(source=str(images("b", [127, 127]))),
                               decision=decision, sinks=sinks, sink_close_timeout=5.0, jsonl=str(tmp_path / "b.jsonl")))
        s = second["sinks"]["mqtt"]
        assert second["alarms"] == 0 and (s["queued"], s["delivered"], s["backlog"]) == (0, 3, 0)
        assert wait_until(lambda: len(sub.ids()) == 3, 10)
    finally:
        sub.close()
    assert [m["frame"] for m in sub.received] == [0, 2, 4] and len(set(sub.ids())) == 3
    assert outbox_rows(spool) == []

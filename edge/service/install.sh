#!/usr/bin/env bash
# Install dcam-edge as a systemd service: user `dcam`, venv in /opt/dcam-edge, config in
# /etc/dcam-edge, state in /var/lib/dcam-edge, unit dcam-edge.service.  Idempotent: re-run to
# upgrade (an existing /etc/dcam-edge/edge.toml is never overwritten).
#
#   sudo ./install.sh                                   # pip install dcam-edge
#   sudo ./install.sh 'dcam-edge[tflite,gpio]'          # Raspberry Pi: LiteRT engine + GPIO sink
#   sudo ./install.sh ./dcam_edge-0.1.0-py3-none-any.whl 'paho-mqtt>=2'
#
# Environment: PREFIX (default /opt/dcam-edge), PYTHON (default python3),
#   SYSTEM_SITE_PACKAGES=auto|yes|no (default auto: yes when apt's picamera2 is installed, so the
#   venv can import it), DRY_RUN=1 (print the commands instead of running them).
set -euo pipefail

PREFIX=${PREFIX:-/opt/dcam-edge}
PYTHON=${PYTHON:-python3}
SYSTEM_SITE_PACKAGES=${SYSTEM_SITE_PACKAGES:-auto}
DRY_RUN=${DRY_RUN:-0}
SERVICE_USER=dcam
ETC=/etc/dcam-edge
STATE=/var/lib/dcam-edge
UNIT=/etc/systemd/system/dcam-edge.service
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$#" -eq 0 ]; then set -- dcam-edge; fi

run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
die() { echo "install.sh: error: $*" >&2; exit 2; }

[ "$DRY_RUN" = 1 ] || [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (apt install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python >= 3.10 required"

# 1. Groups named in the unit's SupplementaryGroups= must exist, even on boxes without GPIO.
for group in video gpio; do
    getent group "$group" >/dev/null || run groupadd --system "$group"
done

# 2. Unprivileged system user without a login shell.
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
run usermod -a -G video,gpio "$SERVICE_USER"   # for manual runs: sudo -u dcam edge-run ...

# 3. Virtual environment (root-owned: the service cannot modify its own code).
venv_flags=()
if [ "$SYSTEM_SITE_PACKAGES" = yes ] || { [ "$SYSTEM_SITE_PACKAGES" = auto ] && "$PYTHON" -c 'import picamera2' 2>/dev/null; }; then
    venv_flags+=(--system-site-packages)   # apt's python3-picamera2 / libcamera bindings
fi
run "$PYTHON" -m venv "${venv_flags[@]}" "$PREFIX/venv"
run "$PREFIX/venv/bin/python" -m pip install --upgrade pip
run "$PREFIX/venv/bin/python" -m pip install --upgrade "$@"
# ProtectSystem=strict makes /opt read-only at run time: compile the bytecode now.
run "$PREFIX/venv/bin/python" -m compileall -q "$PREFIX/venv" || true

# 4. Service files: from the installed package (package data), else next to this script.
SHARE=$("$PREFIX/venv/bin/python" -c 'import edge.service, pathlib; print(pathlib.Path(edge.service.__file__).parent)' 2>/dev/null || echo "$HERE")
[ -f "$SHARE/dcam-edge.service" ] || SHARE=$HERE

run install -d -o root -g "$SERVICE_USER" -m 0750 "$ETC"
run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE" "$STATE/models" "$STATE/snapshots" "$STATE/spool"
if [ ! -e "$ETC/edge.toml" ]; then
    run install -o root -g "$SERVICE_USER" -m 0640 "$SHARE/edge.toml" "$ETC/edge.toml"
else
    echo "keeping existing $ETC/edge.toml (new example: $SHARE/edge.toml)"
fi
if [ "$DRY_RUN" = 1 ]; then
    echo "+ install unit $SHARE/dcam-edge.service -> $UNIT (ExecStart under $PREFIX)"
else
    sed "s#/opt/dcam-edge/venv#$PREFIX/venv#g" "$SHARE/dcam-edge.service" > "$UNIT.tmp"
    chmod 0644 "$UNIT.tmp" && mv "$UNIT.tmp" "$UNIT"
fi

# 5. Enable; start only when the configured model is there (else it would just restart-loop).
run systemctl daemon-reload
model=$("$PYTHON" - "$ETC/edge.toml" <<'EOF' 2>/dev/null || true
import sys
try:
    import tomllib
except ImportError:
    sys.exit(0)
with open(sys.argv[1], "rb") as f:
    print(tomllib.load(f).get("model") or "")
EOF
)
if [ -n "$model" ] && [ -f "$model" ]; then
    run systemctl enable --now dcam-edge.service
    echo "dcam-edge started: systemctl status dcam-edge; journalctl -u dcam-edge -f; curl -s 127.0.0.1:9811/healthz"
else
    run systemctl enable dcam-edge.service
    echo "dcam-edge enabled but not started: copy the model and its manifest to ${model:-the path in $ETC/edge.toml}"
    echo "  (e.g. dcam.int8.onnx + dcam.int8.json into $STATE/models/, chown $SERVICE_USER), edit $ETC/edge.toml,"
    echo "  then: sudo systemctl start dcam-edge"
fi

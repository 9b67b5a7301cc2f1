#!/usr/bin/env bash
# Install dcam-edge as a systemd service: user `dcam`, venv in /opt/dcam-edge, config in
# /etc/dcam-edge, state in /var/lib/dcam-edge, unit dcam-edge.service.  Idempotent: re-run to
# upgrade.  Never overwritten: /etc/dcam-edge/edge.toml and the local drop-in
# /etc/systemd/system/dcam-edge.service.d/local.conf (put local unit settings there).  The unit
# itself is replaced; if the installed one differs it is kept as dcam-edge.service.bak-<time>.
#
#   sudo ./install.sh                                   # pip install dcam-edge
#   sudo ./install.sh 'dcam-edge[tflite,gpio]'          # Raspberry Pi: LiteRT engine + GPIO sink
#   sudo ./install.sh ./dcam_edge-0.1.0-py3-none-any.whl 'paho-mqtt>=2'
#   ./install.sh --root /tmp/image                      # only the files, under /tmp/image
#
# Options: --root DIR (or DESTDIR=DIR): install config, unit, drop-in and directories under DIR
#   instead of / (staging an image, tests); users/groups, the venv and systemctl are skipped then,
#   and ownership is set only when running as root on a host that has the dcam user.
# Environment: PREFIX (default /opt/dcam-edge, the path at run time), PYTHON (default python3),
#   SYSTEM_SITE_PACKAGES=auto|yes|no (default auto: yes when apt's picamera2 is installed, so the
#   venv can import it), DRY_RUN=1 (print the commands instead of running them).
set -euo pipefail

die() { echo "install.sh: error: $*" >&2; exit 2; }

ROOT=${DESTDIR:-}
packages=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --root) [ "$#" -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --) shift; packages+=("$@"); break ;;
        *) packages+=("$1"); shift ;;
    esac
done
set -- ${packages[@]+"${packages[@]}"}
ROOT=${ROOT%/}

PREFIX=${PREFIX:-/opt/dcam-edge}
PYTHON=${PYTHON:-python3}
SYSTEM_SITE_PACKAGES=${SYSTEM_SITE_PACKAGES:-auto}
DRY_RUN=${DRY_RUN:-0}
SERVICE_USER=dcam
ETC=$ROOT/etc/dcam-edge
STATE=$ROOT/var/lib/dcam-edge
UNIT=$ROOT/etc/systemd/system/dcam-edge.service
DROPIN=$UNIT.d/local.conf
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ "$#" -eq 0 ]; then set -- dcam-edge; fi

run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi; }
staged() { [ -n "$ROOT" ]; }
# Value of a directive in the unit we ship (the last one wins, as in systemd), else $2.
unit_value() {
    local v
    v=$(sed -n "s/^$1=[[:space:]]*\([^[:space:]#]*\).*/\1/p" "$SHARE/dcam-edge.service" | tail -n 1)
    echo "${v:-$2}"
}

if staged; then
    [ "$DRY_RUN" = 1 ] || mkdir -p "$ROOT" || die "--root $ROOT: cannot create it"
    echo "installing the service files under $ROOT (users/groups, venv and systemctl skipped)"
else
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
    run "$PYTHON" -m venv ${venv_flags[@]+"${venv_flags[@]}"} "$PREFIX/venv"
    run "$PREFIX/venv/bin/python" -m pip install --upgrade pip
    run "$PREFIX/venv/bin/python" -m pip install --upgrade "$@"
    # ProtectSystem=strict makes /opt read-only at run time: compile the bytecode now.
    run "$PREFIX/venv/bin/python" -m compileall -q "$PREFIX/venv" || true
fi

# 4. Service files: from the installed package (package data), else next to this script.
SHARE=$HERE
if ! staged; then
    SHARE=$("$PREFIX/venv/bin/python" -c 'import edge.service, pathlib; print(pathlib.Path(edge.service.__file__).parent)' 2>/dev/null || echo "$HERE")
    [ -f "$SHARE/dcam-edge.service" ] || SHARE=$HERE
fi

# Ownership: always on a real install; under --root only where it can be applied.
own_root=(-o root -g "$SERVICE_USER")
own_user=(-o "$SERVICE_USER" -g "$SERVICE_USER")
if staged && ! { [ "$(id -u)" -eq 0 ] && id "$SERVICE_USER" >/dev/null 2>&1; }; then
    own_root=()
    own_user=()
fi
# The modes of the unit's ConfigurationDirectoryMode= / StateDirectoryMode= (systemd's default: 0755);
# an existing directory with another mode makes systemd warn at every start.
conf_mode=$(unit_value ConfigurationDirectoryMode 0755)
state_mode=$(unit_value StateDirectoryMode 0755)

run install -d ${own_root[@]+"${own_root[@]}"} -m "$conf_mode" "$ETC"
run install -d ${own_user[@]+"${own_user[@]}"} -m "$state_mode" "$STATE"
run install -d ${own_user[@]+"${own_user[@]}"} -m 0750 "$STATE/models" "$STATE/snapshots" "$STATE/spool"
if [ ! -e "$ETC/edge.toml" ]; then
    run install ${own_root[@]+"${own_root[@]}"} -m 0640 "$SHARE/edge.toml" "$ETC/edge.toml"
else
    echo "keeping existing $ETC/edge.toml (new example: $SHARE/edge.toml)"
fi

# The unit is replaced, but an installed one that differs (local edits, older version) is backed up.
if [ "$DRY_RUN" = 1 ]; then
    echo "+ install unit $SHARE/dcam-edge.service -> $UNIT (ExecStart under $PREFIX; backup if it differs)"
else
    install -d -m 0755 "$(dirname "$UNIT")"
    sed "s#/opt/dcam-edge/venv#$PREFIX/venv#g" "$SHARE/dcam-edge.service" > "$UNIT.tmp"
    chmod 0644 "$UNIT.tmp"
    if [ -f "$UNIT" ] && cmp -s "$UNIT.tmp" "$UNIT"; then
        rm -f "$UNIT.tmp"
        echo "unit $UNIT unchanged"
    else
        if [ -f "$UNIT" ]; then
            stamp=$(date +%Y%m%d-%H%M%S)
            backup=$UNIT.bak-$stamp
            n=1
            while [ -e "$backup" ]; do backup=$UNIT.bak-$stamp.$n; n=$((n + 1)); done
            cp -p "$UNIT" "$backup"
            echo "the installed unit differed: kept it as $backup (local settings belong in $DROPIN)"
        fi
        mv "$UNIT.tmp" "$UNIT"
    fi
fi

# Local unit settings: a drop-in created once and never overwritten (`systemctl edit dcam-edge` works too).
if [ -e "$DROPIN" ]; then
    echo "keeping existing $DROPIN"
elif [ "$DRY_RUN" = 1 ]; then
    echo "+ create drop-in $DROPIN"
else
    install -d -m 0755 "$UNIT.d"
    cat > "$DROPIN.tmp" <<'DROPIN_EOF'
# Local settings for dcam-edge.service. install.sh creates this file once and never overwrites it,
# while it replaces dcam-edge.service itself on every run: put local changes here, then
#   sudo systemctl daemon-reload && sudo systemctl restart dcam-edge
# Settings here override or extend the unit's (an empty assignment resets a list first).
[Service]
# Box without GPIO (the unit names the gpio group):
#SupplementaryGroups=
#SupplementaryGroups=video
# Resource caps on a shared box:
#MemoryMax=1G
#CPUQuota=300%
# A slower watchdog or start-up (seconds):
#WatchdogSec=60
#TimeoutStartSec=300
DROPIN_EOF
    chmod 0644 "$DROPIN.tmp" && mv "$DROPIN.tmp" "$DROPIN"
    echo "created $DROPIN (local unit settings; never overwritten)"
fi

if staged; then
    echo "files installed under $ROOT; on the target create user $SERVICE_USER and the venv under $PREFIX, then:"
    echo "  systemctl daemon-reload && systemctl enable dcam-edge"
    exit 0
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
    echo "dcam-edge started: systemctl status dcam-edge; journalctl -u dcam-edge -f; curl -s 127.0.0.1:9811/"
else
    run systemctl enable dcam-edge.service
    echo "dcam-edge enabled but not started: copy the model and its manifest to ${model:-the path in $ETC/edge.toml}"
    echo "  (e.g. dcam.int8.onnx + dcam.int8.json into $STATE/models/, chown $SERVICE_USER), edit $ETC/edge.toml,"
    echo "  then: sudo systemctl start dcam-edge"
fi

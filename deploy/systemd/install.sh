#!/bin/sh
# Installs the sensor as a systemd service:
#   /usr/local/bin/sensor, /etc/systemd/system/pysensor.service, /etc/pysensor/config.yaml
# under DESTDIR (default /). An existing config.yaml is kept. With DESTDIR=/ (and systemd
# running) the service is enabled and started; otherwise files are only installed.
#
#   sudo deploy/systemd/install.sh [path/to/sensor]
#   DESTDIR=/tmp/root deploy/systemd/install.sh target/release/sensor
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
destdir=${DESTDIR:-/}
binary=${1:-$repo/target/release/sensor}

if [ ! -x "$binary" ]; then
    echo "install.sh: sensor binary $binary not found: run 'cargo xtask build' first" >&2
    exit 1
fi

root=${destdir%/}
install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/pysensor"
install -m 0755 "$binary" "$root/usr/local/bin/sensor"
install -m 0644 "$here/pysensor.service" "$root/etc/systemd/system/pysensor.service"
if [ -e "$root/etc/pysensor/config.yaml" ]; then
    echo "install.sh: keeping existing $root/etc/pysensor/config.yaml"
else
    install -m 0640 "$repo/deploy/config.yaml" "$root/etc/pysensor/config.yaml"
fi

if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now pysensor.service
    echo "install.sh: pysensor.service enabled and started (journalctl -u pysensor)"
else
    echo "install.sh: installed under ${destdir}; enable with: systemctl enable --now pysensor.service"
fi

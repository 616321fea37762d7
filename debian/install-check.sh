#!/usr/bin/env bash
# Installs the package on this machine and checks what a technician gets:
# the user in dialout, the unit as installed (systemd-analyze verify and
# security), `modbridge check` on the default config; then purges it again.
#
#   debian/install-check.sh [BINARY]   # default: the debug build
#
# Root only (dpkg -i). Needs cargo-deb and systemd's tools. The package is
# built around BINARY with `cargo deb --no-build`, so no release build is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}"
binary="${1:-$out/debug/modbridge}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if dpkg-query -W -f='${Status}' modbridge 2>/dev/null | grep -q "installed"; then
    if [ -n "${CI:-}" ]; then
        dpkg --purge modbridge   # left over from an interrupted run
    else
        echo "modbridge is installed on this machine already; not touching it" >&2
        exit 1
    fi
fi
mkdir -p "$work/target/release"
cp "$binary" "$work/target/release/modbridge"
deb=$(CARGO_TARGET_DIR="$work/target" cargo deb --no-build --locked --fast --quiet --output "$work")
echo "== dpkg -i $(basename "$deb")"
trap 'dpkg --purge modbridge >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
dpkg -i "$deb"

echo "== the installed gateway"
id modbridge
id -nG modbridge | tr ' ' '\n' | grep -qx dialout || { echo "modbridge is not in dialout" >&2; exit 1; }
modbridge --version
modbridge check
# As the service would run it: as the modbridge user.
runuser -u modbridge -- modbridge check -c /etc/modbridge/modbridge.toml >/dev/null
systemd-analyze verify --man=no /usr/lib/systemd/system/modbridge.service
systemd-analyze security --offline=true --threshold=20 --no-pager /usr/lib/systemd/system/modbridge.service | tail -n 1
if [ -e /etc/systemd/system/multi-user.target.wants/modbridge.service ]; then
    echo "modbridge.service is enabled"
else
    echo "modbridge.service was not enabled" >&2
    exit 1
fi

echo "== dpkg --purge modbridge"
dpkg --purge modbridge
[ ! -e /usr/bin/modbridge ] && [ ! -e /etc/modbridge/modbridge.toml ]
echo "install check passed"

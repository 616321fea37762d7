#!/usr/bin/env bash
# Tests an ARM build on this x86 machine under qemu-user.
#
#   cross/test-qemu.sh [aarch64|armv7]   # default aarch64
#
# Runs the library's unit tests (cargo test --lib: every test binary runs
# through the qemu runner set in .cargo/config.toml), then a smoke run of the
# release binary (`demo --duration 5s`: a simulated device on loopback polled
# by the gateway, history committed to SQLite), then `check` on every shipped
# config. The end-to-end tests under tests/ start the binary themselves and
# need binfmt_misc to run an ARM executable, which containers rarely have;
# they stay on the native build.
# Needs what cross/build.sh needs, and: apt-get install qemu-user
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-aarch64}" in
    aarch64 | arm64) triple=aarch64-unknown-linux-gnu qemu=qemu-aarch64 sysroot=/usr/aarch64-linux-gnu ;;
    armv7 | armhf) triple=armv7-unknown-linux-gnueabihf qemu=qemu-arm sysroot=/usr/arm-linux-gnueabihf ;;
    *) echo "usage: $0 [aarch64|armv7]" >&2; exit 2 ;;
esac
command -v "$qemu" >/dev/null || { echo "$qemu is missing: apt-get install qemu-user" >&2; exit 1; }

prefix=$(basename "$sysroot")
env_triple=${triple//-/_}
export "CC_$env_triple=$prefix-gcc" "AR_$env_triple=$prefix-ar"
upper=$(echo "$env_triple" | tr a-z A-Z)
export "CARGO_TARGET_${upper}_RUNNER=$qemu -L $sysroot"

started=$(date +%s)
echo "== unit tests for $triple under $qemu"
cargo test --locked --target "$triple" --lib
tests_done=$(date +%s)

out="${CARGO_TARGET_DIR:-target}"
binary="$out/$triple/release/modbridge"
[ -x "$binary" ] || cross/build.sh "$triple"
run() { "$qemu" -L "$sysroot" "$binary" "$@"; }

echo "== $binary under $qemu: --version, check, demo"
run --version
for config in config/*.toml; do
    run check -c "$config" >/dev/null
done
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run demo --duration 5s --dir "$dir" | tail -n 3
[ -s "$dir/data/modbridge.db" ] || { echo "the demo left no database" >&2; exit 1; }
echo "== $triple under qemu: unit tests $((tests_done - started))s, smoke run $(( $(date +%s) - tests_done ))s"

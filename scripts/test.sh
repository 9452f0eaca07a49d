#!/usr/bin/env bash
# Sets up and runs every test: unit tests, and integration tests that start real
# nats-servers and real nodes (embedded SurrealDB) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace --all-targets "$@"

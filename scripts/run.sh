#!/usr/bin/env bash
# Sets up and runs a Canopy node on embedded defaults: a managed nats-server, an
# embedded SurrealDB and generated keys under ./data, GraphQL on 127.0.0.1:4000.
# Extra arguments go to `canopy serve` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec cargo run --quiet --bin canopy -- serve "$@"

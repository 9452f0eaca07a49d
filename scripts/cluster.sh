#!/usr/bin/env bash
# Starts the topology of docker-compose.yml on this machine without Docker:
# three nats-servers clustered by routes on loopback (clients on 4222-4224,
# routes on 6222-6224, push listeners MQTT 1883-1885 and WebSocket 9222-9224),
# three Canopy nodes on them with R3 (HTTP on 4001-4003), and one HTTP entry
# point on 4000 that spreads requests over the nodes (scripts/entry_proxy.py).
# Keys, stores, node data and logs go under ./cluster (CLUSTER_DIR);
# Ctrl-C stops everything, and a second start keeps the data.
#
#   CANOPY_BOOTSTRAP_ADMIN_PASSWORD=change-me-please scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
: "${CANOPY_BOOTSTRAP_ADMIN_PASSWORD:?set CANOPY_BOOTSTRAP_ADMIN_PASSWORD}"
export CANOPY_BOOTSTRAP_ADMIN_EMAIL="${CANOPY_BOOTSTRAP_ADMIN_EMAIL:-admin@example.com}"
dir="$(mkdir -p "${CLUSTER_DIR:-cluster}" && cd "${CLUSTER_DIR:-cluster}" && pwd)"
mkdir -p "$dir/nats" "$dir/logs"

echo "cluster: building canopy (release)" >&2
cargo build --release --quiet --bin canopy
bin="${CARGO_TARGET_DIR:-target}/release/canopy"

# The NATS keys and authorization every server loads, and the nodes' credentials.
"$bin" nats init --dir "$dir/nats/auth" 2>>"$dir/logs/init.log"
# One master key for every node (it unlocks every secret in the log).
if [ ! -f "$dir/master.key" ]; then
  (umask 077 && python3 -c 'import base64, secrets; print(base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode())' >"$dir/master.key")
fi

pids=()
nats_pids=()
stop() {
  trap - INT TERM EXIT
  echo "cluster: stopping" >&2
  # The proxy and the nodes first (SIGTERM: each hands its tenants over),
  # then the servers.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${nats_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

routes="nats://127.0.0.1:6222,nats://127.0.0.1:6223,nats://127.0.0.1:6224"
servers="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
for i in 0 1 2; do
  # nats.conf with this server's push listeners (it includes ./auth/auth.conf).
  sed -e "s/^mqtt { port: 1883 }/mqtt { port: 188$((3 + i)) }/" \
      -e "s/^websocket { port: 9222, no_tls: true }/websocket { port: 922$((2 + i)), no_tls: true }/" \
      nats.conf >"$dir/nats/nats-$i.conf"
  nats-server -c "$dir/nats/nats-$i.conf" -a 127.0.0.1 -p "422$((2 + i))" -sd "$dir/nats/store-$i" -n "n$i" \
    --cluster_name canopy --cluster "nats://127.0.0.1:622$((2 + i))" --routes "$routes" \
    >"$dir/logs/nats-$i.log" 2>&1 &
  nats_pids+=("$!")
done
sleep 2

# The nodes start one after another: the first creates the R3 streams and
# buckets, the others find them.
node_pids=()
for i in 1 2 3; do
  CANOPY_NATS_URL="$servers" CANOPY_NATS_CREDS="$dir/nats/auth/canopy.creds" CANOPY_NATS_AUTH_DIR="$dir/nats/auth" \
  CANOPY_REPLICAS=3 CANOPY_MASTER_KEY="$(cat "$dir/master.key")" CANOPY_DATA_DIR="$dir/node-$i" \
  CANOPY_TRUST_FORWARDED_FOR=true \
    "$bin" serve --http "127.0.0.1:400$i" >"$dir/logs/canopy-$i.log" 2>&1 &
  node_pids+=("$!")
  pids=("${node_pids[@]}")
  until curl -sf "http://127.0.0.1:400$i/readyz" >/dev/null; do
    kill -0 "${node_pids[$((i - 1))]}" 2>/dev/null || { echo "cluster: node $i stopped; see $dir/logs/canopy-$i.log" >&2; exit 1; }
    sleep 0.5
  done
done
python3 scripts/entry_proxy.py --listen 127.0.0.1:4000 127.0.0.1:4001 127.0.0.1:4002 127.0.0.1:4003 \
  >"$dir/logs/proxy.log" 2>&1 &
# Stopped in this order: the proxy, the nodes, then the servers.
pids=("$!" "${node_pids[@]}")
echo "cluster: ready. GraphQL at http://127.0.0.1:4000/graphql (any node: 4001-4003); logs in $dir/logs" >&2
wait "${node_pids[@]}" || true

#!/usr/bin/env bash
# Sets up and runs every test: unit tests, and integration tests that start real
# nats-servers and real nodes (embedded SurrealDB) on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The mail tests send to a real SMTP server, scripts/smtp_sink.py, built on aiosmtpd.
if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "test: installing aiosmtpd (pip install aiosmtpd==1.4.6) for the SMTP sink of the mail tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd==1.4.6 >&2
fi
# The webhook tests verify signatures with the Standard Webhooks project's own
# Python library, as examples/python/webhook_receiver.py does.
if ! python3 -c 'import standardwebhooks' >/dev/null 2>&1; then
  echo "test: installing standardwebhooks (pip install standardwebhooks==1.3.0) for the webhook tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check standardwebhooks==1.3.0 >&2
fi
# The push tests use clients Canopy did not write: paho-mqtt (MQTT 3.1.1) and
# nats-py over WebSocket (which needs aiohttp); the Python example reader in
# examples/ uses nats-py with nkeys (credentials) and jsonschema.
if ! python3 -c 'import paho.mqtt, nats, aiohttp, nkeys, jsonschema' >/dev/null 2>&1; then
  echo "test: installing paho-mqtt, nats-py, aiohttp, nkeys and jsonschema for the push and example tests" >&2
  python3 -m pip install --quiet --disable-pip-version-check paho-mqtt==2.1.0 nats-py==2.9.0 aiohttp==3.14.5 \
    nkeys==0.2.1 jsonschema==4.26.0 >&2
fi
cargo test --workspace --all-targets "$@"

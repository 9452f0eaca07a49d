#!/usr/bin/env python3
"""What an atomic batch costs nats-server, next to single publishes (BENCHMARKS.md).

Starts a throwaway nats-server with this repository's nats.conf (fsync on every
write) on a free port, creates a stream like EVENTS (file storage, atomic
publish allowed), and publishes ~700-byte messages: one per call with an ack,
or N per call as one atomic batch (core publishes with Nats-Batch-* headers,
the last one acknowledged with Nats-Batch-Commit). Prints calls and messages
per second for each shape and concurrency.

Needs nats-server on PATH (`source scripts/setup.sh`) and nats-py
(`python3 -m pip install nats-py`). It measures nats-server alone: no Canopy
code runs.
"""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import nats

PAYLOAD = b"x" * 700
SECONDS = 5.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def ignore(_error):
    """Connection attempts before the server listens fail; the loop retries them."""


async def run(nc, shape, size, concurrency):
    deadline = time.monotonic() + SECONDS
    calls = 0

    async def worker(w):
        nonlocal calls
        i = 0
        while time.monotonic() < deadline:
            i += 1
            if size == 1:
                await nc.request(f"x.{shape}.{w}.{i}", PAYLOAD, timeout=30)
            else:
                batch = uuid.uuid4().hex
                for j in range(1, size):
                    await nc.publish(
                        f"x.{shape}.{w}.{i}.{j}",
                        PAYLOAD,
                        headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(j)},
                    )
                ack = await nc.request(
                    f"x.{shape}.{w}.{i}.{size}",
                    PAYLOAD,
                    timeout=30,
                    headers={"Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(size), "Nats-Batch-Commit": "1"},
                )
                # A refused batch answers with an error, not a sequence: count only stored ones.
                if b'"error"' in ack.data:
                    raise RuntimeError(ack.data.decode())
            calls += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    secs = time.monotonic() - start
    return calls / secs, calls * size / secs


async def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    store = tempfile.mkdtemp(prefix="canopy-batch-")
    port = free_port()
    server = subprocess.Popen(
        ["nats-server", "-c", os.path.join(root, "nats.conf"), "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                nc = await nats.connect(f"nats://127.0.0.1:{port}", error_cb=ignore, allow_reconnect=False)
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            sys.exit("nats-server did not start")
        config = {
            "name": "X",
            "subjects": ["x.>"],
            "storage": "file",
            "allow_atomic": True,
            "duplicate_window": 120 * 10**9,
            "num_replicas": 1,
        }
        await nc.request("$JS.API.STREAM.CREATE.X", json.dumps(config).encode(), timeout=10)
        print(f"{'shape':<28}{'conc':>6}{'calls/s':>10}{'msgs/s':>10}")
        for size, concurrency in [(1, 1), (1, 64), (2, 1), (2, 64), (10, 1), (10, 16)]:
            shape = "single publish" if size == 1 else f"atomic batch of {size}"
            calls, msgs = await run(nc, f"s{size}c{concurrency}", size, concurrency)
            print(f"{shape:<28}{concurrency:>6}{calls:>10.0f}{msgs:>10.0f}")
        await nc.close()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


asyncio.run(main())

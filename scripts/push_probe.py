#!/usr/bin/env python3
"""A push client Canopy did not write, for the tests: paho-mqtt over MQTT 3.1.1,
or nats-py over WebSocket. It connects with a user name and password,
subscribes, and reports what happens as JSON lines on stdout:

  {"event": "connected"} or {"event": "refused", "error": ...}
  {"event": "suback", "topic": ..., "ok": true|false}      (MQTT)
  {"event": "error", "error": ...}                           (NATS: e.g. a permissions violation)
  {"event": "ready"}                                         (every subscription answered)
  {"event": "message", "topic": ..., "payload": ...}

It exits after --count messages, or after --timeout seconds.

  push_probe.py mqtt --port 1883 --user acme --password TOKEN --subscribe 'push/acme/#'
  push_probe.py ws --port 9222 --user acme --password TOKEN --subscribe 'push.acme.>'
"""

import argparse
import asyncio
import json
import sys
import threading
import time


def say(**fields):
    print(json.dumps(fields), flush=True)


def mqtt(args):
    import paho.mqtt.client as paho

    done = threading.Event()
    pending = {}
    received = [0]
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv311)
    client.username_pw_set(args.user, args.password)

    def on_connect(c, _userdata, _flags, reason, _props):
        if reason.is_failure:
            say(event="refused", error=str(reason))
            done.set()
            return
        say(event="connected")
        if not args.subscribe:
            say(event="ready")
        for topic in args.subscribe:
            _, mid = c.subscribe(topic, qos=args.qos)
            pending[mid] = topic

    def on_subscribe(_c, _userdata, mid, reasons, _props):
        topic = pending.pop(mid, "?")
        say(event="suback", topic=topic, ok=not any(r.is_failure for r in reasons))
        if not pending:
            say(event="ready")

    def on_message(_c, _userdata, msg):
        say(event="message", topic=msg.topic, payload=msg.payload.decode("utf-8", "replace"), retain=bool(msg.retain))
        received[0] += 1
        if args.count and received[0] >= args.count:
            done.set()

    def on_disconnect(_c, _userdata, _flags, reason, _props):
        if not done.is_set():
            say(event="disconnected", error=str(reason))
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    try:
        client.connect(args.host, args.port, keepalive=30)
    except Exception as e:  # the server closed the connection before CONNACK
        say(event="refused", error=str(e))
        return
    client.loop_start()
    done.wait(args.timeout)
    client.loop_stop()
    client.disconnect()


async def ws(args):
    import nats

    received = asyncio.Event()
    count = [0]

    async def on_error(e):
        say(event="error", error=str(e))

    try:
        nc = await nats.connect(
            f"ws://{args.host}:{args.port}",
            user=args.user,
            password=args.password,
            allow_reconnect=False,
            connect_timeout=5,
            error_cb=on_error,
        )
    except Exception as e:
        say(event="refused", error=str(e) or type(e).__name__)
        return
    say(event="connected")

    async def on_message(msg):
        say(event="message", topic=msg.subject, payload=msg.data.decode("utf-8", "replace"))
        count[0] += 1
        if args.count and count[0] >= args.count:
            received.set()

    for subject in args.subscribe:
        await nc.subscribe(subject, cb=on_message)
    if args.publish:
        await nc.publish(args.publish, b"from a client")
    await nc.flush()
    # A refused subscription is reported asynchronously, right after the flush.
    await asyncio.sleep(0.3)
    say(event="ready")
    try:
        await asyncio.wait_for(received.wait(), args.timeout)
    except asyncio.TimeoutError:
        pass
    await nc.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["mqtt", "ws"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--subscribe", action="append", default=[])
    p.add_argument("--publish", help="(ws) also publish once to this subject")
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--qos", type=int, default=1, help="(mqtt) the subscriptions' QoS")
    p.add_argument("--timeout", type=float, default=15)
    p.add_argument("--client-id", default=f"probe-{int(time.time() * 1000)}")
    args = p.parse_args()
    if args.mode == "mqtt":
        mqtt(args)
    else:
        asyncio.run(ws(args))
    say(event="exit")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Follows Canopy's event log with a read-only credential and checks each event
against its published JSON Schema (schemas/events/{type}.json).

    pip install nats-py nkeys jsonschema
    canopy nats credentials --read-events --tenant acme > acme.creds   # prints the consumer name
    python3 follow_events.py --creds acme.creds --tenant acme --consumer acme-3f9c...

It prints one JSON line per event ({"seq", "subject", "type", "valid"}, and
"problem" when the event does not match its schema), and stops after --count
events, or when the log has nothing new for --idle seconds.
"""

import argparse
import asyncio
import json
import pathlib
import sys

import jsonschema
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_SCHEMAS = HERE.parent.parent / "schemas" / "events"


def load_schemas(directory):
    """Each event type's validator, from its schema file's own `$schema`."""
    out = {}
    for path in sorted(pathlib.Path(directory).glob("*.json")):
        schema = json.loads(path.read_text())
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        out[path.stem] = cls(schema)
    return out


async def follow(args):
    validators = load_schemas(args.schemas)
    inbox = f"_INBOX_{args.tenant}" if args.tenant else "_INBOX"
    nc = await nats.connect(args.server, user_credentials=args.creds, inbox_prefix=inbox.encode())
    js = nc.jetstream()
    name = args.consumer or "follow-events"
    subject = f"evt.{args.tenant}.>" if args.tenant else "evt.>"
    # A tenant's credential may create only its own consumer, filtered to its tenant.
    await js.add_consumer(
        "EVENTS",
        ConsumerConfig(
            name=name,
            filter_subject=subject,
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=300,
        ),
    )
    sub = await js.pull_subscribe_bind(name, stream="EVENTS", inbox_prefix=(inbox + ".").encode())
    seen = 0
    while not args.count or seen < args.count:
        try:
            batch = await sub.fetch(100, timeout=args.idle)
        except nats.errors.TimeoutError:
            break
        for msg in batch:
            event = json.loads(msg.data)
            line = {"seq": msg.metadata.sequence.stream, "subject": msg.subject, "type": event.get("type")}
            validator = validators.get(event.get("type"))
            if validator is None:
                line.update(valid=False, problem="no schema for this type")
            else:
                errors = sorted(validator.iter_errors(event), key=lambda e: list(e.path))
                line["valid"] = not errors
                if errors:
                    line["problem"] = errors[0].message
            print(json.dumps(line), flush=True)
            seen += 1
    await nc.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="nats://127.0.0.1:4222")
    p.add_argument("--creds", required=True, help="a reader's .creds file")
    p.add_argument("--tenant", help="the tenant of a tenant's credential")
    p.add_argument("--consumer", help="the consumer name a tenant's credential names")
    p.add_argument("--schemas", default=str(DEFAULT_SCHEMAS))
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--idle", type=float, default=3)
    asyncio.run(follow(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

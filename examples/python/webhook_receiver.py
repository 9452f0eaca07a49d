#!/usr/bin/env python3
"""A webhook endpoint for Canopy that verifies every delivery with the Standard
Webhooks library (`pip install standardwebhooks`).

    python3 examples/python/webhook_receiver.py --port 8090 --secret whsec_...

Give `--secret` twice while a secret is rotated (`rotateWebhookSecret`): Canopy
signs with both during the overlap, and either verifies. A delivery that no
secret verifies (forged, altered, or older than five minutes) gets 400; a
verified one gets 204, and a line on stdout with its `webhook-id`, its event
type and whether that id was seen before (a retry: deduplicate on it).
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8090, help="0: any free port (the first line names it)")
    parser.add_argument("--secret", action="append", required=True, help="a whsec_ secret (repeat during a rotation)")
    args = parser.parse_args()
    verifiers = [Webhook(s) for s in args.secret]
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self.send_response(413)
                self.end_headers()
                return
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified_with = []
            for i, verifier in enumerate(verifiers):
                try:
                    verifier.verify(body, headers)
                    verified_with.append(i)
                except WebhookVerificationError:
                    pass
            if not verified_with:
                self.send_response(400)
                self.end_headers()
                print(json.dumps({"rejected": headers.get("webhook-id")}), flush=True)
                return
            delivery = headers["webhook-id"]
            event = json.loads(body)
            print(json.dumps({
                "id": delivery,
                "type": event["type"],
                "verified_with": verified_with,
                "duplicate": delivery in seen,
            }), flush=True)
            seen.add(delivery)
            self.send_response(204)
            self.end_headers()

        do_PUT = do_POST
        do_PATCH = do_POST

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()

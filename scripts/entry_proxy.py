#!/usr/bin/env python3
"""A small HTTP entry point for scripts/cluster.sh: takes requests on one
address and hands each to the next Canopy node in turn, trying the others when
one does not answer (docker-compose.yml uses Caddy for this). Plain HTTP
requests only: GraphQL subscriptions (WebSocket) go to a node directly.

    python3 scripts/entry_proxy.py --listen 127.0.0.1:4000 127.0.0.1:4001 127.0.0.1:4002
"""
import argparse
import http.client
import itertools
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", default="127.0.0.1:4000")
    parser.add_argument("upstreams", nargs="+", help="host:port of each node")
    args = parser.parse_args()
    turn = itertools.cycle(range(len(args.upstreams)))
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["X-Forwarded-For"] = self.client_address[0]
            with lock:
                first = next(turn)
            for k in range(len(args.upstreams)):
                host, port = args.upstreams[(first + k) % len(args.upstreams)].rsplit(":", 1)
                try:
                    conn = http.client.HTTPConnection(host, int(port), timeout=60)
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                except OSError:
                    continue
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_error(502, "no node answered")

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = forward

        def log_message(self, fmt, *a):
            pass

    host, port = args.listen.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()

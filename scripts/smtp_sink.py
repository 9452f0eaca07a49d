#!/usr/bin/env python3
"""A real SMTP server for Canopy's tests (aiosmtpd): every mail it accepts is
written to DIR as <n>.eml, whole or not at all (a temporary file, then a rename),
so a test that sees the file can read all of it.

    python3 scripts/smtp_sink.py --port 2525 --dir /tmp/mails
    python3 scripts/smtp_sink.py --port 2525 --dir /tmp/mails --reject 550

With --reject CODE every RCPT and DATA is answered with that code (550 makes a
permanent failure, 451 a transient one). It runs until SIGTERM or SIGINT.
`pip install aiosmtpd` (scripts/test.sh does it when it is missing).
"""

import argparse
import itertools
import os
import signal
import threading

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, directory, reject):
        self.directory = directory
        self.reject = reject
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()

    def refusal(self):
        return f"{self.reject} Refused by the test sink (--reject {self.reject})"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject:
            return self.refusal()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.reject:
            return self.refusal()
        with self.lock:
            n = next(self.numbers)
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        final = os.path.join(self.directory, f"{n}.eml")
        temporary = os.path.join(self.directory, f".{n}.eml.tmp")
        with open(temporary, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, final)
        return "250 Message accepted for delivery"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", required=True, help="where received mails are written")
    parser.add_argument("--reject", type=int, help="answer every RCPT and DATA with this code")
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)

    controller = Controller(Sink(args.dir, args.reject), hostname=args.host, port=args.port)
    controller.start()  # returns once the server answers on the port
    print(f"smtp sink listening on {args.host}:{args.port}, writing to {args.dir}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()

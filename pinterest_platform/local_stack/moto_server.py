"""moto's server with one request at a time: the local stand-in for S3 and Kinesis.

moto's backends are in-memory models that are not safe under concurrent requests (its own
`Shard.put_record` says so: two PutRecords at once can take the same sequence number, and one record
silently replaces the other). AWS has no such race, so the stack serializes moto's requests rather than
let concurrent clients (the gateway's threads, Spark's tasks) lose records. Run as
`python -m pinterest_platform.local_stack.moto_server -H 127.0.0.1 -p PORT`."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def serialized(app):
    """A WSGI app that runs `app` one request at a time, its whole response included."""
    lock = threading.Lock()

    def call(environ, start_response):
        with lock:
            response = app(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                if hasattr(response, "close"):
                    response.close()

    return call


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    # threads still accept connections concurrently; only moto's handling is one at a time
    run_simple(args.host, args.port, serialized(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()

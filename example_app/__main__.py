"""``python -m example_app [--once] [--port N]``.

Serves the example app on 127.0.0.1. With ``--once`` it instead requests a
slow endpoint over a real socket, waits for the report, prints its path and
exits: a self-check that the whole chain works on this machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import urllib.request
from pathlib import Path

from werkzeug.serving import make_server

from example_app import create_app, perfwatch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m example_app")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--once", action="store_true",
                        help="hit the slow endpoint once, print the report path, exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                                                   "%(message)s")
    app = create_app()
    if not args.once:
        print(f"Example shop on http://127.0.0.1:{args.port}/ ; reports go to "
              f"{Path(app.config['PERFWATCH_REPORT_DIR']).resolve()}", flush=True)
        app.run(host="127.0.0.1", port=args.port)
        return 0

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/inventory?category=tools&api_key=s3cret"
        with urllib.request.urlopen(url, timeout=30) as response:
            print(f"GET {url.split('&')[0]}&api_key=... -> {response.status}", flush=True)
        if not perfwatch.flush(30, app):
            print("the report was not written within 30 s", file=sys.stderr)
            return 1
    finally:
        server.shutdown()
        server.server_close()
    reports = sorted(Path(app.config["PERFWATCH_REPORT_DIR"]).glob("perfwatch-*.html"),
                     key=lambda p: p.stat().st_mtime)
    if not reports:
        print("no report was written", file=sys.stderr)
        return 1
    print(f"report: {reports[-1].resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

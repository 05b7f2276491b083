"""Standalone server: ``python -m tests.airtable_emulator ...`` (from the repository root),
``python -m airtable_emulator ...`` (with tests/ on sys.path) or ``python tests/airtable_emulator ...``."""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a directory (python tests/airtable_emulator): sys.path[0] is this package's own
    # folder, where http.py would shadow the standard library's http package.  Import the
    # package from its parent folder instead.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))
    from airtable_emulator import Emulator
else:
    from . import Emulator

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.airtable_emulator",
                                     description="Local Airtable Web API emulator (one base).")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--base", required=True, help="path to BASE.json")
    parser.add_argument("--rps", type=float, default=5.0, help="requests per second per base (0 = unlimited)")
    parser.add_argument("--penalty-s", type=float, default=30.0, help="429 penalty window in seconds")
    parser.add_argument("--token", default="test-token", help="the only accepted bearer token")
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    args = parser.parse_args(argv)
    emu = Emulator(args.base, token=args.token, rps=args.rps or None, penalty_s=args.penalty_s,
                   retry_after=args.retry_after, verbose=True)
    emu.start(args.port)
    print(f"[airtable-emulator] serving base {emu.base_id} at {emu.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

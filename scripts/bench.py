#!/usr/bin/env python3
"""The gsc-cs benchmark: ``cosparse bench`` under another name.

    python3 scripts/bench.py -o bench-out            # all modes, ULX3S-85F, with nextpnr
    python3 scripts/bench.py -o out --reduced --no-pnr -n 8   # the quick version CI runs

See docs/benchmark.md for what is measured.
"""

import sys

from cosparse.compiler.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))

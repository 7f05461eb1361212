"""``python -m hpcpar.core.script SCRIPT [ARGS]``: run a script on this rank under the hpcpar runner."""

import sys

from .runner import run_path

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m hpcpar.core.script SCRIPT.py [ARGS...]")
    run_path(sys.argv[1], sys.argv[2:])

"""Helper run inside a throw-away network namespace (`unshare --net`): restore stdin, print the save.

`plan --diff` needs the desired rules in iptables' own canonical spelling (option order, `/32`, `\\'`), which
only the kernel+iptables pair can produce; an empty namespace gives exactly that, with nothing else mixed in.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str]) -> int:
    restore, save = argv[1], argv[2]
    text = sys.stdin.read()
    proc = subprocess.run([restore], input=text, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    out = subprocess.run([save], capture_output=True, text=True)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

"""The `adaptir` command line: adaptir bench | finetune | eval | restore.

Each subcommand lives in its own module, which provides `register(subparsers)`; the
module is imported only when the command line is built, so a missing optional
dependency of one command never breaks the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# subcommand -> module that implements it
COMMANDS = {
    "bench": "adaptir_kernels.bench",
    "finetune": "adaptir_kernels.train",
    "eval": "adaptir_kernels.evaluate",
    "restore": "adaptir_kernels.evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptir", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    registered = set()
    for name, modname in COMMANDS.items():
        if modname in registered:
            continue
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as err:
            if err.name != modname:
                raise
            continue
        mod.register(sub)
        registered.add(modname)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv  # which options were given (a resumed run takes the others from its checkpoint)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""``ctxflow moa eval`` on a machine without faiss (the lent GPU machine): the same command, reached
through ctxflow.attention.cli instead of ctxflow.cli (which loads every memory bank, faiss included).

    CTXFLOW_DEVICE=cuda python bench/moa_eval.py --densities 0.5,0.25 --length 4096 --windows 6 --keys 10 --retrieval-length 1024
"""
import argparse
import sys

from ctxflow.attention import cli
from ctxflow.errors import UserError

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="c"))
    try:
        sys.exit(cli.cmd_eval(p.parse_args(["moa", "eval", *sys.argv[1:]])))
    except UserError as exc:
        sys.exit(f"error: {exc}")

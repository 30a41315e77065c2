"""``ctxflow moa ...`` on a machine without faiss (the lent GPU machine): the same subcommands, reached
through ctxflow.attention.cli instead of ctxflow.cli (which loads every memory bank, faiss included).

    CTXFLOW_DEVICE=cuda python bench/moa_cli.py eval --densities 0.5,0.25 --length 4096 --windows 6 --keys 10 --retrieval-length 1024
    CTXFLOW_DEVICE=cuda python bench/moa_cli.py protect plan.json --profile profile.pt --ks 8,16 -o out.json
"""
import argparse
import sys

from ctxflow.attention import cli
from ctxflow.errors import UserError

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    cli.register(p.add_subparsers(dest="c"))
    args = p.parse_args(["moa", *sys.argv[1:]])
    try:
        sys.exit(getattr(cli, f"cmd_{args.moa_cmd}")(args))
    except UserError as exc:
        sys.exit(f"error: {exc}")

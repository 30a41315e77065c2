"""``ctxflow serve``: an OpenAI-compatible server for a local model.

    ctxflow serve [--model default] [--host 127.0.0.1] [--port 8000] [--name NAME] [--max-request-mb 4] [--read-timeout 60]
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .server import MAX_BODY, READ_TIMEOUT

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_MB = MAX_BODY / 2**20


def cmd_serve(args: argparse.Namespace) -> int:
    from ..llm.local import LocalLM
    from .server import make_server

    try:
        llm = LocalLM(model=args.model, max_context=args.max_context, dtype=args.dtype, device=args.device,
                      cache=not args.no_cache, threads=args.threads)
    except ValueError as exc:
        raise UserError(f"serve: {exc}") from None
    llm.warm_up()  # load before listening: the first request is not slowed by the load
    try:
        httpd = make_server(llm, args.host, args.port, name=args.name or args.model, verbose=args.verbose,
                            max_body=int(args.max_request_mb * 2**20), read_timeout=args.read_timeout)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Pick another --port "
                        "(or --port 0 for any free one).") from None
    host, port = httpd.server_address[:2]
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the model (no authentication)",
              file=sys.stderr)
    print(f"ctxflow serve: model {args.name or args.model!r} ({llm.model_id}, context {llm.context_length}) "
          f"at http://{host}:{port}/v1", file=sys.stderr, flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: give a number in 0..65535 (0: any free port)")
    return port


def _positive(what: str, example: str):
    """An argparse type: a number > 0 (and < 1e6; nan and inf refused) of ``what``."""
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = -1.0
        if not 0 < x < 1e6:  # also refuses nan and inf
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: give a number of {example}")
        return x
    return parse


_megabytes = _positive("a size", "megabytes > 0, e.g. 4 or 0.5")
_seconds = _positive("a time", "seconds > 0, e.g. 60")


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible HTTP API")
    s.add_argument("--model", "-m", default="default", help="model: 'default' (SmolLM2-135M-Instruct), a HF folder or a .gguf file")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    s.add_argument("--port", type=_port, default=8000, help="port (0: any free port; the address is printed on stderr)")
    s.add_argument("--name", help="model name clients send (default: the --model value)")
    s.add_argument("--max-context", type=int, help="emulate a shorter context window")
    s.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    s.add_argument("--no-cache", action="store_true", help="do not use the LLM-call cache (every greedy request reaches the model)")
    s.add_argument("--max-request-mb", type=_megabytes, default=MAX_REQUEST_MB, metavar="MB",
                   help=f"largest request body taken, in MiB (default: {MAX_REQUEST_MB:g}); bigger ones are answered "
                        "HTTP 413 without reaching the model")
    s.add_argument("--read-timeout", type=_seconds, default=READ_TIMEOUT, metavar="S",
                   help=f"seconds a client may stay silent while its request is read (default: {READ_TIMEOUT:g}); "
                        "a body that stops short of its Content-Length is answered HTTP 408")
    s.add_argument("--verbose", "-v", action="store_true", help="log every request on stderr")
    s.set_defaults(fn=cmd_serve)

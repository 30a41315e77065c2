"""A real ``ctxflow serve`` process on loopback (free port), started once per module that asks."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

_ADDR = re.compile(r"at (http://127\.0\.0\.1:\d+)/v1")


class Served:
    def __init__(self, *extra: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "ctxflow.cli", "serve", "--port", "0", "--no-cache", "--threads", "1", *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        self.log: list[str] = []
        self.url = None
        deadline = time.time() + 300
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError(f"ctxflow serve exited ({self.proc.wait()}): {''.join(self.log)[-2000:]}")
            self.log.append(line)
            m = _ADDR.search(line)
            if m:
                self.url = m.group(1)
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("ctxflow serve did not start within 300 s")
        threading.Thread(target=lambda: [self.log.append(x) for x in self.proc.stderr], daemon=True).start()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def served():
    s = Served()
    yield s
    s.stop()

"""Headless Chromium loads the web chat page, sends a prompt, and the streamed thinking and answer appear.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON messages separated by NUL
bytes on file descriptors 3 and 4), so no websocket or selenium package is needed. Debian's `chromium` package is
installed by .ci/run; where no Chromium binary can be found the test is skipped with a message saying so.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
import urllib.request

import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

WRAPUP = "Time is up; I will give my answer now."


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """A headless Chromium with a DevTools session on one page."""

    def __init__(self, binary: str):
        self.profile = tempfile.mkdtemp(prefix="r1kit-chromium-")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child: its fd 3 reads our commands, its fd 4 writes the replies
            a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-pipe",
                 "about:blank"]
        self.proc = subprocess.Popen([binary, *flags], preexec_fn=wire_fds, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf, self.next_id, self.session = b"", 0, None

    def send(self, method: str, timeout: float = 30, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.from_chrome], [], [], left)[0]:
                raise TimeoutError(f"no reply to {method}")
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium exited")
            self.buf += chunk

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def eval(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied {expression!r}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    engine = LLM(tiny_checkpoint("deepseek_v3"), max_model_len=256).engine
    # a small default thinking budget: the random model then always reaches an answer within max_tokens
    with BackgroundServer(create_app(engine, "tiny", max_thinking_tokens=4)) as s:
        yield s


def test_page_needs_no_network_beyond_its_own_server(server):
    with urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "fetch(\"/v1/chat/completions\"" in page


@pytest.mark.slow
def test_headless_chromium_sends_a_prompt_and_the_streamed_answer_appears(server):
    binary = _find_chromium()
    if binary is None:
        pytest.skip("Chromium not found: install Debian's package (apt-get install -y chromium) to run this test")
    browser = Chromium(binary)
    try:
        browser.send("Target.setDiscoverTargets", discover=False)
        browser.open(server.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.getElementById('prompt')", timeout=30)
        assert browser.eval("document.getElementById('model').textContent") == "tiny"
        browser.eval("document.getElementById('max-tokens').value = '48';"
                     "document.getElementById('prompt').value = 'What is 2 + 2?';"
                     "document.getElementById('form').requestSubmit(); true")
        state = browser.wait_for(
            "['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
        error = browser.eval("(document.querySelector('.error') || {}).textContent || ''")
        assert state == "done", error
        reasoning = browser.eval("document.querySelector('.reasoning').textContent")
        answer = browser.eval("document.querySelector('.answer').textContent")
        stats = browser.eval("document.querySelector('.stats').textContent")
        assert reasoning.endswith(WRAPUP)
        assert answer.strip()
        assert browser.eval("document.querySelector('details.thinking').open") is False  # folded once answered
        assert re.search(r"^48 tokens \(\d+ thinking\) · [\d.]+ tokens/s", stats), stats
        assert browser.eval("document.querySelector('.user').textContent") == "What is 2 + 2?"
    finally:
        browser.close()

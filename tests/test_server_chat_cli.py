"""`r1kit chat` one-shot, run as a subprocess: against a server (--url) and in-process (--model)."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

from r1kit.server.api import create_app
from r1kit.server.background import BackgroundServer

ARGS = ["--max-tokens", "45", "--max-thinking-tokens", "4", "--seed", "5", "--temperature", "1", "--top-p", "1"]
WRAPUP = "Time is up; I will give my answer now."


def _chat(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1kit", "chat", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_chat_one_shot_against_a_server_prints_the_servers_thinking_then_answer(tiny_checkpoint):
    from r1kit.engine.llm import LLM

    engine = LLM(tiny_checkpoint("deepseek_v3"), max_model_len=256).engine
    with BackgroundServer(create_app(engine, "tiny")) as server:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2 + 2?"}], "max_tokens": 45,
                "max_thinking_tokens": 4, "seed": 5, "temperature": 1, "top_p": 1}
        req = urllib.request.Request(server.url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            expected = json.load(r)["choices"][0]["message"]
        proc = _chat("--url", server.url, *ARGS, "What is 2 + 2?")
    assert proc.returncode == 0, proc.stderr
    assert expected["reasoning_content"].endswith(WRAPUP) and expected["content"]
    assert proc.stdout == f"[thinking]\n{expected['reasoning_content']}\n[answer]\n{expected['content']}\n"
    assert "45 tokens" in proc.stderr and "tokens/s" in proc.stderr


@pytest.mark.slow
def test_chat_one_shot_with_a_local_model_prints_thinking_and_answer(tiny_checkpoint):
    proc = _chat("--model", tiny_checkpoint("deepseek_v3"), *ARGS, "What is 2 + 2?")
    assert proc.returncode == 0, proc.stderr
    thinking, sep, answer = proc.stdout.partition("\n[answer]\n")
    assert sep and thinking.startswith("[thinking]\n") and thinking.endswith(WRAPUP)
    assert answer.strip(), proc.stdout
    assert "\x1b[" not in proc.stdout  # no ANSI codes when stdout is not a terminal


def test_chat_reports_an_unreachable_server_as_a_one_line_error():
    proc = _chat("--url", "http://127.0.0.1:9", "hi")
    assert proc.returncode == 2
    assert "cannot reach" in proc.stderr and "Traceback" not in proc.stderr

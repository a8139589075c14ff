"""Scoring for r1kit_arithmetic.yaml: r1kit's own verifier, so lm-eval and `r1kit eval` agree by construction.

lm-eval's chat-completions models pass the answer only (message.content, after the thinking); r1kit's answer
extraction looks after "</think>" (r1kit/rewards/extract.py), so the answer is scored as "</think>\\n\\n" + answer.
"""
from r1kit.rewards import accuracy_reward


def process_results(doc, results):
    answer = results[0] or ""  # None when the thinking never closed: no answer
    example = {"answer": str(doc["answer"]), "verifier": doc.get("verifier", "math")}
    return {"acc": float(accuracy_reward("</think>\n\n" + answer, example) >= 1.0)}

"""Prompt templates: how a task's question becomes model input, and how a reference answer is written back.

- "r1_distill" (default): a chat user message, question + the R1-distill instruction "Please reason step by step, and
  put your final answer within \\boxed{}."; the chat template prefills `<think>\\n`. Input: example["messages"].
- "r1_zero": the R1-Zero plain-text prompt for base models (no chat template); the answer goes in <answer> tags.
  Input: example["prompt"] (ends with "Assistant:").
- "plain": the question alone as a chat user message.
"""
from __future__ import annotations

from r1kit.errors import UserError

R1_DISTILL_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
R1_DISTILL_CODE_INSTRUCTION = "Please reason step by step, and put your final code in a ```python code block."
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The assistant "
    "first thinks about the reasoning process in the mind and then provides the user with the answer. The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, i.e., "
    "<think> reasoning process here </think> <answer> answer here </answer>. User: {question}. Assistant:"
)
TEMPLATES = ("r1_distill", "r1_zero", "plain")


def apply_template(example: dict, template: str, code: bool = False) -> dict:
    """Fill example["prompt"] (r1_zero) or example["messages"] from example["question"]; returns the example."""
    if template not in TEMPLATES:
        raise UserError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    q = example["question"]
    example["template"] = template
    if template == "r1_zero":
        example["prompt"] = R1_ZERO_TEMPLATE.format(question=q.strip().rstrip("."))
    elif template == "r1_distill":
        instruction = R1_DISTILL_CODE_INSTRUCTION if code else R1_DISTILL_INSTRUCTION
        example["messages"] = [{"role": "user", "content": f"{q.rstrip()}\n{instruction}"}]
    else:
        example["messages"] = [{"role": "user", "content": q}]
    return example


def format_completion(example: dict, reasoning: str, answer: str) -> str:
    """A completion in the example's template: what a model should generate (for cold-start SFT targets).

    Chat templates prefill `<think>\\n`, so the completion starts with the reasoning itself; r1_zero writes both tags.
    """
    if example.get("template") == "r1_zero":
        return f"<think>\n{reasoning.strip()}\n</think>\n<answer>{answer}</answer>"
    final = answer if answer.lstrip().startswith("```") else f"The answer is $\\boxed{{{answer}}}$."
    return f"{reasoning.strip()}\n</think>\n\n{final}"

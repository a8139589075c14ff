"""Reasoning parser: streaming deltas must add up to the one-shot split for every chunking, tags split anywhere."""
import random

import pytest

from r1kit.engine.reasoning_parser import REASONING_PARSERS, ReasoningParser, get_reasoning_parser
from r1kit.errors import UserError

R1_OUTPUT = ("Okay, so I need to add 2 and 3. <thin is not a tag, nor is </thi here.\n"
             "2 + 3 = 5. Wait, let me check: 5 - 3 = 2. Yes.\n</think>\n\nThe answer is **5**. A later </think> "
             "or <think> is plain answer text.")
THOUGHT_OUTPUT = ("<thought>\nStep 1: Identify the cycle type using the P-V diagram points...\n"
                  "Step 2: Calculate work done (Area under curve). W = ...\n"
                  "Verification: The unit implies Joules, which matches.\n</thought>\nFINAL ANSWER: 42%")


def stream(parser: ReasoningParser, chunks: list[str]) -> tuple[str, str]:
    reasoning, content = [], []
    for chunk in chunks:
        r, c = parser.feed(chunk)
        reasoning.append(r)
        content.append(c)
        assert parser.reasoning == "".join(reasoning) and parser.content == "".join(content)
    r, c = parser.finish()
    return "".join(reasoning) + r, "".join(content) + c


def test_prefilled_output_without_opening_tag_is_reasoning_up_to_end_tag():
    reasoning, content = ReasoningParser(prefilled=True).split(R1_OUTPUT)
    assert reasoning == ("Okay, so I need to add 2 and 3. <thin is not a tag, nor is </thi here.\n"
                         "2 + 3 = 5. Wait, let me check: 5 - 3 = 2. Yes.")
    assert content == "The answer is **5**. A later </think> or <think> is plain answer text."


@pytest.mark.parametrize("prefilled", [True, False])
def test_output_opening_with_the_tag_is_split_the_same_with_or_without_prefill(prefilled):
    text = "\n<think>\nabc\n</think>\n\nanswer"
    assert ReasoningParser(prefilled=prefilled).split(text) == ("abc", "answer")


def test_missing_end_tag_keeps_everything_as_reasoning_when_prefilled():
    assert ReasoningParser(prefilled=True).split("still thinking about </thi") == ("still thinking about </thi", "")
    assert stream(ReasoningParser(prefilled=True), ["still thinking ", "about </thi"]) == (
        "still thinking about </thi", "")


def test_no_opening_tag_without_prefill_is_all_content_untouched():
    text = "  Just an answer.\n</think> stays"
    assert ReasoningParser(prefilled=False).split(text) == ("", text)
    assert stream(ReasoningParser(prefilled=False), list(text)) == ("", text)


def test_partial_end_tag_is_held_back_until_resolved():
    p = ReasoningParser(prefilled=True)
    assert p.feed("two plus two </th") == ("two plus two", "")
    assert p.feed("ink>") == ("", "")  # the tag and the whitespace before it never reach either side
    assert p.feed("\n\n") == ("", "")
    assert p.feed("4") == ("", "4")
    assert p.finish() == ("", "")


def test_text_that_only_looks_like_a_tag_is_released_to_reasoning():
    p = ReasoningParser(prefilled=True)
    assert p.feed("a </thi") == ("a", "")
    assert p.feed("ng>") == (" </thing>", "")


def every_two_chunk_split(text):
    for i in range(len(text) + 1):
        yield [text[:i], text[i:]]


def every_three_chunk_split(text):
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            yield [text[:i], text[i:j], text[j:]]


@pytest.mark.parametrize("name,text", [("r1", R1_OUTPUT), ("r1", "<think>\n" + R1_OUTPUT), ("thought", THOUGHT_OUTPUT),
                                       ("think", R1_OUTPUT), ("none", R1_OUTPUT)])
def test_every_split_point_gives_the_one_shot_split(name, text):
    expected = get_reasoning_parser(name).split(text)
    assert "".join(expected) != ""
    for chunks in every_two_chunk_split(text):
        assert stream(get_reasoning_parser(name), chunks) == expected, chunks
    assert stream(get_reasoning_parser(name), list(text)) == expected


def test_every_pair_of_split_points_around_the_tags_gives_the_one_shot_split():
    text = "<think>\n x</think>\n\n</think>y"
    for prefilled in (True, False):
        expected = ReasoningParser(prefilled=prefilled).split(text)
        assert expected == ("x", "</think>y")
        for chunks in every_three_chunk_split(text):
            assert stream(ReasoningParser(prefilled=prefilled), chunks) == expected, chunks


def test_thought_pair_from_the_prompt_pattern():
    reasoning, content = get_reasoning_parser("thought").split(THOUGHT_OUTPUT)
    assert reasoning.startswith("Step 1: Identify") and reasoning.endswith("which matches.")
    assert content == "FINAL ANSWER: 42%"
    # The R1 tags mean nothing to this parser.
    assert get_reasoning_parser("thought").split("<think>x</think>y") == ("", "<think>x</think>y")


def random_text(rng: random.Random) -> str:
    pieces = ["<think>", "</think>", "<thought>", "</thought>", "<", "</", "<th", "</thi", "think", "\n", "\n\n", " ",
              "a", "bc", "42", "é", "日本", "🙂", ">"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))


def random_chunks(rng: random.Random, text: str) -> list[str]:
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 8))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("name", ["r1", "think", "thought"])
def test_random_texts_and_random_chunkings_agree_with_the_one_shot_split(name):
    rng = random.Random(1234)
    for _ in range(2000):
        text = random_text(rng)
        expected = get_reasoning_parser(name).split(text)
        parser = get_reasoning_parser(name)
        assert stream(parser, random_chunks(rng, text)) == expected, text
        # Nothing is invented: the output pieces appear in order inside the text.
        reasoning, content = expected
        assert reasoning in text and content in text
        if reasoning and content:
            assert text.find(content, text.find(reasoning) + len(reasoning)) >= 0


def test_none_parser_passes_everything_through_as_content():
    assert stream(get_reasoning_parser("none"), ["<think>a", "</think>b"]) == ("", "<think>a</think>b")


def test_reasoning_done_flips_when_the_end_tag_arrives():
    p = get_reasoning_parser("r1")
    p.feed("thinking </thi")
    assert not p.reasoning_done
    p.feed("nk>")
    assert p.reasoning_done


def test_prefilled_override_and_unknown_name():
    assert get_reasoning_parser("r1", prefilled=False).split("plain") == ("", "plain")
    assert get_reasoning_parser("think", prefilled=True).split("plain") == ("plain", "")
    with pytest.raises(UserError, match="unknown reasoning parser"):
        get_reasoning_parser("nope")
    assert {"r1", "thought", "none"} <= set(REASONING_PARSERS)


def test_feed_after_finish_is_an_error():
    p = get_reasoning_parser("r1")
    p.finish()
    with pytest.raises(RuntimeError):
        p.feed("x")

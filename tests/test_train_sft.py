"""SFT: assistant-only loss mask, resume equals an uninterrupted run, torchrun with 2 processes equals 1 process."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from r1kit.errors import UserError
from r1kit.train.config import SFTConfig
from r1kit.train.sft import train_sft
from r1kit.train.sft_data import encode_conversation


def _traces(path, n=24):
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7 + 1, i % 5 + 2
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": f"<think>\n{a} plus {b} makes {a + b}.\n</think>\n\n{a + b}"}]}) + "\n")
        f.write(json.dumps({"prompt": "Say hi.", "completion": "hi"}) + "\n")
    return str(path)


def _metrics(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def test_loss_mask_covers_exactly_the_assistant_completion(tiny_checkpoint):
    from r1kit.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_checkpoint("qwen2"))
    msgs = [{"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\nThe answer is 5."}]
    [(ids, mask)] = encode_conversation(tok, msgs)
    first = mask.index(1)
    assert all(m == 0 for m in mask[:first]) and all(m == 1 for m in mask[first:])
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True)
    assert tok.decode(ids[:first]) == prompt                          # ends with "<｜Assistant｜><think>\n"
    assert tok.decode(ids[first:]) == "2 plus 3 is 5.\n</think>\n\nThe answer is 5.<｜end▁of▁sentence｜>"
    # a turn without reasoning still learns to close the (empty) thinking block
    [(ids2, mask2)] = encode_conversation(tok, [msgs[0], {"role": "assistant", "content": "5"}])
    assert tok.decode([t for t, m in zip(ids2, mask2) if m]) == "\n</think>\n\n5<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("dtype", ["float32", "bf16"])   # bf16: autocast over fp32 master weights, on CPU too
def test_sft_lowers_loss_and_writes_a_loadable_final_model(tiny_checkpoint, tmp_path, dtype):
    from r1kit.models.checkpoint import load_model

    data = _traces(tmp_path / "t.jsonl")
    cfg = SFTConfig(max_steps=15, batch_size=4, max_seq_len=64, lr=3e-3, warmup_steps=2, dtype=dtype)
    final = train_sft(tiny_checkpoint("deepseek_v3"), str(tmp_path / "run"), cfg, data=[data])
    m = _metrics(tmp_path / "run")
    assert len(m) == 15 and m[-1]["loss"] < m[0]["loss"] - 1.0
    assert load_model(str(final)) is not None and (final / "tokenizer.json").is_file()
    assert json.load(open(tmp_path / "run" / "config.json"))["lr"] == 3e-3


def test_bad_dtype_is_refused_with_the_allowed_values():
    from r1kit.errors import UserError
    from r1kit.train.precision import autocast_context

    with pytest.raises(ValueError, match="dtype must be one of .*bf16.*'fp8'"):
        SFTConfig(dtype="fp8")
    with pytest.raises(UserError, match="fp16 autocast is CUDA-only"):
        autocast_context(torch.device("cpu"), "fp16")


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_checkpoint, tmp_path):
    model = tiny_checkpoint("deepseek_v3")
    data = _traces(tmp_path / "t.jsonl")
    kw = dict(max_steps=6, batch_size=2, grad_accum_steps=2, max_seq_len=48, lr=2e-3, warmup_steps=2, packing=False)
    train_sft(model, str(tmp_path / "full"), SFTConfig(**kw), data=[data])
    assert train_sft(model, str(tmp_path / "cut"), SFTConfig(**kw, stop_after=3), data=[data]) is None
    assert len(_metrics(tmp_path / "cut")) == 3
    train_sft(model, str(tmp_path / "cut"), SFTConfig(**kw), data=[data], resume=True)
    full, cut = _metrics(tmp_path / "full"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in cut] == list(range(1, 7))
    for a, b in zip(full, cut):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_process(tiny_checkpoint, tmp_path, wrapper):
    model = tiny_checkpoint("qwen2")
    data = _traces(tmp_path / "t.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["-m", "r1kit", "train", "sft", "--model", model, "--data", data, "--max-steps", "4", "--max-seq-len",
              "48", "--lr", "3e-3", "--seed", "1"]
    subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one"), "--batch-size", "4"],
                   check=True, env=env, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                        str(29613 + (wrapper == "fsdp")), *common, "--out", str(tmp_path / "two"), "--batch-size", "2",
                        "--fsdp", str(wrapper == "fsdp")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    base = load_file(os.path.join(model, "model.safetensors"))
    moved = max(float((one[k] - base[k]).abs().max()) for k in one)
    assert moved > 1e-3                                               # training did change the weights
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    assert [m["loss"] for m in _metrics(tmp_path / "one")] == pytest.approx(
        [m["loss"] for m in _metrics(tmp_path / "two")], rel=1e-5)
    if wrapper == "fsdp":        # an FSDP run cut after step 2 and resumed (optimizer state included) ends the same
        port = ["--master-port", "29615"]
        for extra in (["--stop-after", "2"], ["--resume"]):
            r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *port, *common,
                                "--out", str(tmp_path / "cut"), "--batch-size", "2", "--fsdp", "true", *extra],
                               env=env, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
        state = torch.load(tmp_path / "cut" / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=False)
        assert state["optimizer"]["state"]                            # Adam moments were saved, not None
        cut = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
        for k in two:
            assert torch.allclose(cut[k], two[k], atol=1e-5), k


def test_task_cold_start_examples_train_on_the_reference_solution(tiny_checkpoint):
    from r1kit.tasks import load_task
    from r1kit.tokenizer import load_tokenizer
    from r1kit.train.task_data import cold_start_examples

    tok = load_tokenizer(tiny_checkpoint("qwen2"))
    spec = "countdown?numbers=3&n=4&seed=3"
    task = load_task(spec)
    examples = cold_start_examples(tok, [spec], 4)
    assert len(examples) == 4
    for (ids, mask), ex in zip(examples, task.examples):
        trained = tok.decode([t for t, m in zip(ids, mask) if m])
        assert trained == task.reference_solution(ex) + "<｜end▁of▁sentence｜>"
        assert tok.decode(ids[:mask.index(1)]).endswith("<｜Assistant｜><think>\n")


def test_task_targets_direct_and_text_train_on_the_answer_alone_and_on_plain_text(tiny_checkpoint):
    from r1kit.tasks import load_task
    from r1kit.tokenizer import load_tokenizer
    from r1kit.train.task_data import cold_start_examples

    tok = load_tokenizer(tiny_checkpoint("qwen2"))
    specs = ["arithmetic?digits=2&n=3", "countdown?numbers=3&n=5&seed=1"]
    tasks = [load_task(s) for s in specs]
    direct = cold_start_examples(tok, specs, 0, target="direct")
    text = cold_start_examples(tok, specs, 0, target="text")
    pairs = [(t, ex) for t in tasks for ex in t.examples]
    assert len(direct) == len(text) == 8      # num_examples 0: every example of each spec
    for (ids, mask), (t, ex) in zip(direct, pairs):
        assert tok.decode([i for i, m in zip(ids, mask) if m]) == t.direct_solution(ex) + "<｜end▁of▁sentence｜>"
    for (ids, mask), (t, ex) in zip(text, pairs):
        assert all(mask) and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[1:-1]) == t.plain_text(ex) and "<｜User｜>" not in tok.decode(ids)
    with pytest.raises(UserError, match="task target"):
        cold_start_examples(tok, specs, 0, target="essay")


def test_text_records_train_on_every_token_beside_conversations(tiny_checkpoint, tmp_path):
    from r1kit.tokenizer import load_tokenizer
    from r1kit.train.sft_data import encode_text, read_sft_records

    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"text": "Compute 12 + 30.\nThe answer is 42."}) + "\n"
                    + json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    records = read_sft_records(str(path))
    assert records[0] == "Compute 12 + 30.\nThe answer is 42." and isinstance(records[1], list)
    tok = load_tokenizer(tiny_checkpoint("qwen2"))
    ids, mask = encode_text(tok, records[0])
    assert all(mask) and tok.decode(ids) == "<｜begin▁of▁sentence｜>" + records[0] + "<｜end▁of▁sentence｜>"
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(UserError, match='"text"'):
        read_sft_records(str(tmp_path / "bad.jsonl"))
    final = train_sft(tiny_checkpoint("qwen2"), str(tmp_path / "run"), SFTConfig(max_steps=2, batch_size=2,
                      max_seq_len=32), data=[str(path)])
    assert (final / "model.safetensors").is_file()

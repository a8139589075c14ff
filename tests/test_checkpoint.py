"""Checkpoint I/O in the Hugging Face layout: round trips with transformers, shards, MTP keys, and clear errors."""
from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from r1kit.errors import UserError
from r1kit.models.checkpoint import INDEX_NAME, load_model, load_model_config, save_model
from r1kit.models.deepseek_v3 import DeepseekV3Config
from r1kit.models.random_checkpoint import preset_config
from r1kit.models.registry import build_model, config_from_hf_dict


def _scaled(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(6)  # O(1) logits so "identical" means something
    return model


@pytest.mark.parametrize("model_type", ["deepseek_v3", "qwen2", "llama"])
def test_r1kit_save_loads_in_transformers_with_identical_logits(model_type, tmp_path):
    ours = _scaled(build_model(preset_config(model_type, "tiny", vocab_size=80), device="cpu", seed=3)).eval()
    if model_type == "deepseek_v3":
        with torch.no_grad():
            for moe in ours.moe_layers():
                moe.gate.e_score_correction_bias.normal_(0, 0.2)
    save_model(ours, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == ours.config.architecture
    ids = torch.randint(0, 80, (2, 20))
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert ref.abs().max() > 0.5
    assert (ref - got).abs().max().item() <= 1e-5


def test_transformers_save_loads_in_r1kit_and_saves_back_identically(tmp_path):
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    hf = _scaled(transformers.Qwen2ForCausalLM(cfg)).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf", device="cpu")
    save_model(ours, tmp_path / "r1")
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "r1" / "model.safetensors")
    assert a.keys() == b.keys() and "lm_head.weight" not in b  # tied head not duplicated, like save_pretrained
    assert all(torch.equal(a[k], b[k]) for k in a)
    ids = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        assert torch.equal(ours(ids), load_model(tmp_path / "r1", device="cpu")(ids))


def test_sharded_checkpoint_round_trip(tmp_path):
    ours = _scaled(build_model(preset_config("deepseek_v3", "tiny", vocab_size=80), device="cpu", seed=4)).eval()
    save_model(ours, tmp_path, max_shard_bytes=100_000)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert "model.layers.2.mlp.experts.7.down_proj.weight" in index["weight_map"]  # HF per-expert keys
    ids = torch.randint(0, 80, (2, 12))
    with torch.no_grad():
        ref = ours(ids)
        assert torch.equal(load_model(tmp_path, device="cpu")(ids), ref)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        assert (hf(ids).logits - ref).abs().max().item() <= 1e-5


def _tiny_saved(tmp_path, model_type="deepseek_v3"):
    save_model(build_model(preset_config(model_type, "tiny", vocab_size=80), device="cpu", seed=0), tmp_path)
    return tmp_path / "model.safetensors"


def test_missing_tensor_error_names_the_key(tmp_path):
    file = _tiny_saved(tmp_path)
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(UserError, match=r"model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight \(32, 64\)"):
        load_model(tmp_path, device="cpu")


def test_mismatched_shape_error_names_key_and_shapes(tmp_path):
    file = _tiny_saved(tmp_path)
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.kv_b_proj.weight"] = torch.zeros(7, 32)
    save_file(tensors, file)
    with pytest.raises(UserError, match=r"kv_b_proj\.weight.*\(7, 32\).*\(128, 32\)"):
        load_model(tmp_path, device="cpu")


def test_unexpected_tensor_is_an_error_but_mtp_layer_is_skipped(tmp_path):
    file = _tiny_saved(tmp_path)
    tensors = load_file(file)
    n = 3  # tiny deepseek_v3 has 3 layers; the MTP module is layer 3
    tensors[f"model.layers.{n}.eh_proj.weight"] = torch.zeros(64, 128)
    tensors[f"model.layers.{n}.shared_head.norm.weight"] = torch.zeros(64)
    save_file(tensors, file)
    load_model(tmp_path, device="cpu")  # skipped with a note
    tensors["model.layers.0.self_attn.rotary.inv_freq"] = torch.zeros(4)
    save_file(tensors, file)
    with pytest.raises(UserError, match=r"unexpected tensor 'model\.layers\.0\.self_attn\.rotary\.inv_freq'"):
        load_model(tmp_path, device="cpu")


def test_unknown_model_type_error_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "hidden_size": 8}))
    with pytest.raises(UserError, match="gpt_neox.*deepseek_v3, llama, qwen2, qwen3"):
        load_model(tmp_path)


def test_offline_hub_id_error_says_to_pass_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=r"'someone/not-a-real-model-r1kit'.*local directory"):
        load_model("someone/not-a-real-model-r1kit")
    with pytest.raises(UserError, match="no checkpoint directory"):
        load_model("./definitely/not/here")


def test_hub_style_config_is_read_and_written_for_transformers():
    """DeepSeek-V3's hub config.json uses rope_theta + rope_scaling{"type": "yarn"}; transformers 5 uses
    rope_parameters. Both read the same, and what r1kit writes gives transformers the same rope parameters."""
    hub = {"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 10000,
           "max_position_embeddings": 163840, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
           "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
           "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}}
    cfg = config_from_hf_dict(hub)
    assert isinstance(cfg, DeepseekV3Config)
    assert cfg.rope_parameters["rope_type"] == "yarn" and cfg.rope_parameters["factor"] == 40
    written = cfg.to_hf_dict()
    assert "auto_map" not in written and written["topk_method"] == "noaux_tc"  # unknown keys kept, code refs dropped
    assert config_from_hf_dict(written).rope_parameters == cfg.rope_parameters
    hf = transformers.DeepseekV3Config(**{k: v for k, v in written.items() if k != "model_type"})
    for key in ("rope_type", "factor", "mscale_all_dim", "original_max_position_embeddings", "rope_theta"):
        assert hf.rope_parameters[key] == cfg.rope_parameters[key]


def test_load_in_bfloat16_keeps_router_bias_float32(tmp_path):
    _tiny_saved(tmp_path)
    model = load_model(tmp_path, dtype="bfloat16", device="cpu")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert not model.training
    assert load_model_config(tmp_path).num_hidden_layers == 3


def test_random_checkpoint_fixture_is_complete(tiny_checkpoint):
    path = tiny_checkpoint("deepseek_v3")
    model = load_model(path, device="cpu")
    from r1kit.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok.encode("What is 2 + 3?")])
    with torch.no_grad():
        assert model(ids).shape == (1, ids.shape[1], len(tok))

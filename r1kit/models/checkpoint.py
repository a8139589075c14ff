"""Load and save models in the Hugging Face layout: config.json + model.safetensors (or shards + index).

    load_model(path_or_hub_id, dtype=None, device=None) -> model      (dtype/device: see r1kit.device; auto by default)
    save_model(model, out_dir, max_shard_bytes=...)                   (transformers' AutoModelForCausalLM loads it)
    load_model_config(path_or_hub_id) -> config dataclass

Tensors are streamed file by file into a model allocated without initialisation, each copied straight into its
parameter (or into a view of a fused/stacked parameter, see `hf_state_dict`). Every checkpoint key must be used and
every parameter filled; otherwise the error names the key and the shapes. DeepSeek's multi-token-prediction layer
(`model.layers.{num_hidden_layers}.*`) is skipped with a note, as transformers does. A hub id is fetched with
huggingface_hub when the network allows; offline, the error says to pass a local directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from r1kit.config import atomic_write_text
from r1kit.errors import UserError
from r1kit.models.hf_config import HFConfig
from r1kit.models.registry import build_model, config_from_hf_dict

log = logging.getLogger(__name__)

SAFE_NAME, INDEX_NAME = "model.safetensors", "model.safetensors.index.json"
DEFAULT_SHARD_BYTES = 2 * 1024**3
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# ---- locating a checkpoint ------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub id (config, weights, tokenizer files) if needed."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} has no config.json; pass a Hugging Face checkpoint directory")
        return path
    name = str(path_or_id)
    if path.exists() or not _HUB_ID.match(name):
        raise UserError(f"no checkpoint directory at {name!r}; pass a directory with config.json and "
                        f"*.safetensors, or a Hugging Face hub id like 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B'")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"])
    except Exception as e:  # offline, unknown repo, gated, ...
        raise UserError(f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {e}). "
                        f"Without network access, download it elsewhere and pass the local directory instead "
                        f"(e.g. `huggingface-cli download {name} --local-dir DIR`, then use DIR)") from None
    return Path(local)


def load_model_config(path_or_id: str | os.PathLike) -> HFConfig:
    d = resolve_checkpoint(path_or_id)
    try:
        raw = json.loads((d / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{d / 'config.json'} is not valid JSON: {e}") from None
    return config_from_hf_dict(raw)


def _weight_files(d: Path) -> list[Path]:
    if (d / INDEX_NAME).is_file():
        weight_map = json.loads((d / INDEX_NAME).read_text())["weight_map"]
        return [d / f for f in sorted(set(weight_map.values()))]
    if (d / SAFE_NAME).is_file():
        return [d / SAFE_NAME]
    found = sorted(d.glob("*.safetensors"))
    if not found:
        raise UserError(f"{d} has no *.safetensors weights (PyTorch .bin checkpoints are not supported; "
                        f"convert with transformers' save_pretrained(safe_serialization=True))")
    return found


# ---- key mapping ----------------------------------------------------------------------------------------------------
def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Hugging Face checkpoint key -> the tensor (or a view of a fused/stacked parameter) holding it.

    Modules with an `hf_tensors(prefix)` method describe their own keys; everything else uses its parameter names
    and persistent buffers. A tied lm_head is left out, as save_pretrained does.
    """
    out: dict[str, torch.Tensor] = {}

    def visit(module: nn.Module, prefix: str) -> None:
        if hasattr(module, "hf_tensors"):
            out.update(module.hf_tensors(prefix))
            return
        for name, p in module.named_parameters(recurse=False):
            out[prefix + name] = p
        for name, b in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                out[prefix + name] = b
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    if getattr(model.config, "tie_word_embeddings", False):
        out.pop("lm_head.weight", None)
    return out


def _is_mtp_key(key: str, num_layers: int) -> bool:
    return key.startswith(f"model.layers.{num_layers}.") or bool(
        re.match(r"model\.layers\.(\d+)\.", key) and int(key.split(".")[2]) > num_layers)


# ---- load / save ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def load_model(path_or_id: str | os.PathLike, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None) -> nn.Module:
    """The model of a Hugging Face checkpoint directory (or hub id), in eval mode."""
    d = resolve_checkpoint(path_or_id)
    config = load_model_config(d)
    model = build_model(config, device=device, dtype=dtype, init=False)
    targets = hf_state_dict(model)
    tied = getattr(config, "tie_word_embeddings", False)
    filled: set[str] = set()
    skipped_mtp = 0
    for file in _weight_files(d):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                if key == "lm_head.weight" and tied:
                    continue  # some exports write the tied copy too
                target = targets.get(key)
                if target is None:
                    if _is_mtp_key(key, config.num_hidden_layers):
                        skipped_mtp += 1
                        continue
                    raise UserError(f"unexpected tensor {key!r} (shape {tuple(f.get_slice(key).get_shape())}) in "
                                    f"{file}: the {config.model_type} model has no such parameter")
                shape = tuple(f.get_slice(key).get_shape())
                if shape != tuple(target.shape):
                    raise UserError(f"tensor {key!r} in {file} has shape {shape}, but the model built from "
                                    f"config.json expects {tuple(target.shape)}")
                target.copy_(f.get_tensor(key))
                filled.add(key)
    missing = [k for k in targets if k not in filled]
    if missing:
        shown = ", ".join(f"{k} {tuple(targets[k].shape)}" for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(f"checkpoint {d} is missing {len(missing)} tensor(s): {shown}{more}")
    if skipped_mtp:
        log.info("skipped %d multi-token-prediction tensors (model.layers.%d.*); r1kit does not use the MTP head",
                 skipped_mtp, config.num_hidden_layers)
    return model.eval()


def save_model(model: nn.Module, out_dir: str | os.PathLike, max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write config.json + model.safetensors (or model-0000i-of-0000n.safetensors + index when larger than
    max_shard_bytes). Files are written to temporary names first and renamed, so a crash leaves no half file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach() for k, v in hf_state_dict(model).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    for stale in list(out.glob("model*.safetensors")) + [out / INDEX_NAME]:
        stale.unlink(missing_ok=True)
    names = [SAFE_NAME] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                                  for i in range(len(shards))]
    for name, shard in zip(names, shards):
        _write_safetensors(out / name, shard)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2) + "\n")
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    atomic_write_text(out / "config.json", json.dumps(model.config.to_hf_dict(dtype=dtype), indent=2) + "\n")
    return out


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    data = {k: v.to("cpu").contiguous().clone() for k, v in tensors.items()}  # clone: views share storage
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(data, tmp, metadata={"format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

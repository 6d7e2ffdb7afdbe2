"""A random-weight Llama of a named shape, saved as a transformers folder with SmolLM2's tokenizer.

For timing only: the weights are random (seeded), so speed and memory are those of the real
model while its outputs are noise.

    python -m perf.random_model --shape smollm2-1.7b --out /tmp/smollm2-1.7b-random \
        --tokenizer .gpu/tokenizer

On a CUDA machine the weights are initialised on the GPU (seconds, where 1.7B on the CPU takes
minutes) and saved in ``--dtype`` (bfloat16 by default: half the disk and load time; the trainers
load them as float32 anyway).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    # HuggingFaceTB/SmolLM2-1.7B(-Instruct)'s config.json
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=8192, rope_theta=130000.0, rms_norm_eps=1e-5),
    # SmolLM2-135M's shape
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    # the built-in tiny-llama's shape: CPU smoke tests
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 rope_theta=10000.0, rms_norm_eps=1e-5),
}


def build(shape: str, out: Path, tokenizer_dir: Path, dtype: torch.dtype, seed: int = 0,
          device: str | None = None) -> dict:
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dims = dict(SHAPES[shape])
    rope_theta = dims.pop("rope_theta")
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, hidden_act="silu",
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **dims)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.to(dtype)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    params = sum(p.numel() for p in model.parameters())
    tmp = out.parent / f".{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    info = {"shape": shape, "out": str(out), "params": params, "dtype": str(dtype),
            "built_on": device, "seconds": round(time.perf_counter() - started, 1),
            "bytes_on_disk": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}
    return info


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-1.7b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="a folder holding SmolLM2's tokenizer files")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--device", help="where to initialise (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = build(args.shape, args.out, args.tokenizer, getattr(torch, args.dtype), args.seed,
                 args.device)
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    sys.exit(0 if main() else 1)

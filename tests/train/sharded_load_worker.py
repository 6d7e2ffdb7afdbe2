"""One process of a sharded load (run by torchrun from test_sharded_load.py): build the model's
skeleton, load it into shards, record this process's memory, and check its shards against the
checkpoint on disk.

Writes ``<out>/rank<k>.json``: resident memory after the imports, the peak after the load
(``VmHWM``), and whether every local shard, buffer and tie matched."""

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from ablate.train import fsdp


def status_bytes(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def main(folder: Path, out: Path) -> None:
    fsdp.init_from_env()
    before = status_bytes("VmRSS")
    model = fsdp.build_model(AutoModelForCausalLM, folder)
    fsdp.shard(model, model, torch.device("cpu"))
    peak = status_bytes("VmHWM")
    rank, world = fsdp.rank(), fsdp.world_size()
    mismatched, local_bytes = [], 0
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        stored = set(weights.keys())
        for name, param in model.named_parameters():
            local = param.to_local()
            local_bytes += local.numel() * local.element_size()
            # FSDP2 shards dim 0 in torch.chunk's pieces; a tied name reads the stored one
            key = name if name in stored else "model.embed_tokens.weight"
            rows = -(-param.shape[0] // world)
            expected = weights.get_slice(key)[rank * rows:(rank + 1) * rows].float()
            if local.dtype != torch.float32 or not torch.equal(local, expected):
                mismatched.append(name)
    rotary = type(model.model.rotary_emb)(model.config)
    if not torch.equal(model.model.rotary_emb.inv_freq, rotary.inv_freq):
        mismatched.append("model.rotary_emb.inv_freq")
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rss_after_imports": before, "peak": peak, "local_bytes": local_bytes,
        "mismatched": mismatched, "tied": tied}))
    fsdp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

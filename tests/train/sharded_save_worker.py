"""One process of a sharded save (run by torchrun from test_sharded_load.py): load the tiny
model into shards, move every weight (a stand-in for training), save it in bf16, and write the
moved weights whole (rank 0) for the test to compare with what transformers reads back."""

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ablate.train import fsdp


def main(folder: Path, out: Path) -> None:
    fsdp.init_from_env()
    model = fsdp.build_model(AutoModelForCausalLM, folder)
    fsdp.shard(model, model, torch.device("cpu"))
    with torch.no_grad():
        for k, param in enumerate(model.parameters()):
            param.mul_(1.5).add_(0.01 * k)  # the same change on every shard
    moved = {name: p.full_tensor() for name, p in model.named_parameters()}
    fsdp.save_pretrained(model, model, AutoTokenizer.from_pretrained(folder), out / "model",
                         torch.bfloat16)
    if fsdp.is_main_process():
        torch.save(moved, out / "moved.pt")
    fsdp.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

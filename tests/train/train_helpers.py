"""Small preference rows built in code, and weight comparison, for the trainer tests."""

from pathlib import Path

import torch


def arithmetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Prompts with a right and a wrong answer; long enough to exercise padding and batching."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        a, b = (int(x) for x in torch.randint(1, 50, (2,), generator=gen))
        filler = " Please think carefully." * int(torch.randint(0, 4, (1,), generator=gen))
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} plus {b}?{filler}"}],
            "chosen": [{"role": "assistant", "content": f"{a} plus {b} is {a + b}."}],
            "rejected": [{"role": "assistant",
                          "content": f"I think it is {a + b + 1 + i % 3}, or maybe not." * (1 + i % 2)}],
            "source": "arithmetic", "margin": float(i % 3)})
    return rows


def load_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """A saved model's tensors, from one file or from the shards its index names."""
    import json

    from safetensors.torch import load_file

    index = Path(model_dir) / "model.safetensors.index.json"
    if not index.is_file():
        return load_file(str(Path(model_dir) / "model.safetensors"))
    files = set(json.loads(index.read_text())["weight_map"].values())
    return {name: tensor for file in sorted(files)
            for name, tensor in load_file(str(Path(model_dir) / file)).items()}


def assert_same_weights(dir_a: Path, dir_b: Path, atol: float = 1e-6) -> float:
    a, b = load_weights(dir_a), load_weights(dir_b)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"
    return worst

"""``compile_regions`` (DPOConfig / RMConfig): the compiled MLP and norm regions give the same
log-probs and gradients as eager, over batches of different lengths (the regions are compiled
with dynamic shapes, so a new length must not change the result)."""

import pytest
import torch

from ablate.train.collate import collate_shared_prompt
from ablate.train.common import TrainingError, compile_regions, tokenize_pairs
from ablate.train.logps import CompletionLogps


@pytest.mark.slow
def test_compiled_regions_match_eager(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Say something " * (1 + i), "chosen": "Kind words. " * (2 + i),
             "rejected": "No." * (1 + i)} for i in range(4)]
    pairs, _ = tokenize_pairs(rows, tokenizer, 256, 128)
    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    compiled = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_regions(compiled) == 2 * 3 + 1  # 2 layers x (MLP, 2 norms) + the final norm
    for batch_pairs in (pairs[:2], pairs[2:]):  # two widths: the dynamic graph serves both
        batch = collate_shared_prompt(batch_pairs, tokenizer.pad_token_id)
        results = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            logps = CompletionLogps(model).batch_logps(batch)
            logps.sum().backward()
            results.append((logps.detach(), model.model.layers[0].mlp.up_proj.weight.grad.clone(),
                            model.model.norm.weight.grad.clone()))
        for want, got in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the regions really ran compiled: the MLP and the norm captured, shared across layers
    print(dict(torch._dynamo.utils.counters["frames"]), dict(torch._dynamo.utils.counters["stats"]))
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 2


def test_compile_regions_names_what_it_could_not_find():
    class Layer(torch.nn.Module):
        pass

    class NoRegions(torch.nn.Module):
        _no_split_modules = ["Layer"]

        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer()])

    with pytest.raises(TrainingError, match="NoRegions.*mlp"):
        compile_regions(NoRegions())

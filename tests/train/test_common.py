import json

import pytest
import torch

from ablate.train.checkpoints import Throughput
from ablate.train.collate import collate_pairs, collate_shared_prompt, width_multiple
from ablate.train.common import (
    TokenizedPair, epoch_order, micro_batches, plan_batches, split_heldout, warmup_then_linear,
    tokenize_pairs,
)
from ablate.train.logps import CompletionLogps, token_logps


def msg(role, text):
    return [{"role": role, "content": text}]


def row(prompt="Say hi", chosen="Hi!", rejected="Go away.", **extra):
    return {"prompt": msg("user", prompt), "chosen": msg("assistant", chosen),
            "rejected": msg("assistant", rejected), "source": "test", "margin": None, **extra}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_tokenize_masks_the_prompt_and_keeps_the_end_of_turn(tokenizer):
    pairs, skipped = tokenize_pairs([row()], tokenizer, 512, 256)
    assert not skipped and len(pairs) == 1
    pair = pairs[0]
    full = tokenizer.apply_chat_template(msg("user", "Say hi") + msg("assistant", "Hi!"),
                                         tokenize=False)
    assert tokenizer.decode(pair.prompt_ids + pair.chosen_ids) == full
    assert tokenizer.decode(pair.chosen_ids).startswith("Hi!<|im_end|>")
    assert tokenizer.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")


def test_bad_rows_are_counted_and_skipped(tokenizer):
    rows = [row(), row(prompt=""), {"chosen": "x", "rejected": "y"}, row(chosen=""),
            {"prompt": "p", "chosen": "x"}, row(chosen="Same", rejected="Same"), "not a dict",
            {"prompt": "Plain strings work", "chosen": "yes", "rejected": "no"}]
    pairs, skipped = tokenize_pairs(rows, tokenizer, 512, 256)
    assert [p.index for p in pairs] == [0, 7]
    assert skipped == {"empty or missing prompt": 3, "empty or missing chosen": 1,
                       "empty or missing rejected": 1, "identical chosen and rejected": 1}


def test_truncation_and_fully_truncated_pairs(tokenizer):
    long_prompt = "word " * 200
    rows = [row(prompt=long_prompt, chosen="A fine answer here.", rejected="A poor answer."),
            row(chosen="alpha " * 50, rejected="alpha " * 50 + "beta")]
    pairs, skipped = tokenize_pairs(rows, tokenizer, max_length=60, max_prompt_length=40)
    assert len(pairs) == 1 and len(pairs[0].prompt_ids) == 40
    assert pairs[0].length <= 60
    # the second pair differs only after the cut
    assert skipped == {"identical after truncation": 1}
    pairs, skipped = tokenize_pairs(rows[:1], tokenizer, max_length=40, max_prompt_length=40)
    assert skipped == {"fully truncated by max_length": 1}
    # a prompt allowed past max_length leaves no room either (DPOConfig refuses such settings)
    pairs, skipped = tokenize_pairs(rows[:1], tokenizer, max_length=40, max_prompt_length=64)
    assert skipped == {"fully truncated by max_length": 1}
    pairs, skipped = tokenize_pairs(rows[:1], tokenizer, max_length=60, max_prompt_length=40,
                                    drop_truncated=True)
    assert skipped == {"longer than max_length": 1}


def test_token_logps_value_and_gradient_match_log_softmax():
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    upstream = torch.randn(37, dtype=torch.float64)
    ours = token_logps(hidden, weight, targets, chunk=8)
    (ours * upstream).sum().backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    naive = torch.log_softmax(hidden @ weight.T, -1).gather(1, targets[:, None]).squeeze(1)
    (naive * upstream).sum().backward()
    torch.testing.assert_close(ours.double(), naive, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_completion_logps_match_the_full_forward(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    pairs, _ = tokenize_pairs([row(), row(prompt="Longer prompt, please answer",
                                          chosen="A longer chosen answer", rejected="No")],
                              tokenizer, 512, 256)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    ours = CompletionLogps(model, chunk=3)(batch.input_ids, batch.attention_mask,
                                           batch.scored)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    per_token = torch.log_softmax(logits[:, :-1].float(), -1).gather(
        2, batch.input_ids[:, 1:, None]).squeeze(2)
    answers = [(p.prompt_ids, p.chosen_ids) for p in pairs] + \
        [(p.prompt_ids, p.rejected_ids) for p in pairs]
    # token t of a row is predicted at t - 1: the answer's tokens are prompt..end
    expected = torch.stack([per_token[row, len(prompt) - 1:len(prompt) + len(answer) - 1].sum()
                            for row, (prompt, answer) in enumerate(answers)])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    assert batch.real_tokens == sum(p.real_tokens for p in pairs)


def test_batch_plan_is_seeded_and_covers_each_epoch():
    plan = plan_batches(10, batch_size=4, epochs=2, seed=3)
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(plan[:3], [])) == list(range(10))
    assert plan == plan_batches(10, batch_size=4, epochs=2, seed=3)
    assert plan != plan_batches(10, batch_size=4, epochs=2, seed=4)
    assert len(plan_batches(10, batch_size=4, epochs=0.5, seed=3)) == 2


def test_length_grouped_plan_sorts_within_windows_and_still_covers_each_epoch():
    lengths = [int(x) for x in torch.randint(10, 1000, (50,), generator=torch.Generator()
                                                .manual_seed(0))]
    plan = plan_batches(50, batch_size=5, epochs=2, seed=3, lengths=lengths, length_grouping=4)
    assert [len(b) for b in plan] == [5] * 20
    for epoch in (plan[:10], plan[10:]):
        assert sorted(sum(epoch, [])) == list(range(50))
    assert plan == plan_batches(50, 5, 2, 3, lengths=lengths, length_grouping=4)
    assert plan != plan_batches(50, 5, 2, 4, lengths=lengths, length_grouping=4)
    # each window of 4 batches is one sorted run: every batch is a contiguous slice of it
    order = epoch_order(50, 3, 0)
    windows = [sorted(order[i:i + 20], key=lambda j: (-lengths[j], j)) for i in (0, 20, 40)]
    slices = [w[i:i + 5] for w in windows for i in range(0, len(w), 5)]
    assert sorted(map(sorted, plan[:10])) == sorted(map(sorted, slices))
    # far less spread inside a batch than in plain shuffled batches
    def spread(batches):
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread(plan[:10]) < 0.5 * spread(plan_batches(50, 5, 1, 3))
    # grouping 0 or 1, or no lengths: the plain plan
    for kwargs in ({"lengths": lengths, "length_grouping": 1}, {"length_grouping": 4}):
        assert plan_batches(50, 5, 2, 3, **kwargs) == plan_batches(50, 5, 2, 3)


def test_padding_to_a_multiple_changes_shapes_not_logps(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    rows = [row(prompt="Say hi " * k, chosen="Hi! " * (k + 1), rejected="No.") for k in (1, 3)]
    pairs, _ = tokenize_pairs(rows, tokenizer, 512, 256)
    torch.manual_seed(0)
    module = CompletionLogps(AutoModelForCausalLM.from_pretrained(tiny_model_dir,
                                                                  dtype=torch.float32))
    pad = tokenizer.pad_token_id
    plain, padded = collate_pairs(pairs, pad), collate_pairs(pairs, pad, 64)
    assert padded.input_ids.shape[1] == 64 and plain.input_ids.shape[1] < 64
    assert padded.real_tokens == plain.real_tokens
    with torch.no_grad():
        expected = module(plain.input_ids, plain.attention_mask, plain.scored)
        got = module(padded.input_ids, padded.attention_mask, padded.scored)
        shared = collate_shared_prompt(pairs, pad, 64)
        assert shared.input_ids.shape[1] == 64
        got_shared = module.batch_logps(shared)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_shared, expected, rtol=1e-5, atol=1e-5)
    assert width_multiple(0, torch.device("cpu")) == 1
    assert width_multiple(0, torch.device("cuda")) == 64
    assert width_multiple(8, torch.device("cpu")) == 8


def test_throughput_reports_the_first_step_apart():
    speed = Throughput()
    for tokens in (100, 300, 200):
        with speed:
            pass
        speed.add(tokens, 2)
    summary = speed.summary()
    assert summary["real_tokens"] == 600 and summary["pairs"] == 6
    assert summary["after_first_step_tokens"] == 500
    assert summary["first_step_seconds"] + summary["after_first_step_seconds"] == \
        pytest.approx(summary["train_seconds"], abs=2e-3)


def test_micro_batches_group_similar_lengths():
    assert micro_batches([9, 1, 8, 2], [0, 1, 2, 3], 2) == [[1, 3], [2, 0]]


def test_micro_batches_follow_the_layout_length():
    # prompt, chosen, rejected: by the longer sequence pairs 0 and 1 look alike (13 and 12
    # tokens), but a shared-prompt row holds both answers (17 and 22 tokens)
    pairs = [TokenizedPair(0, (1,) * 10, (2,) * 3, (3,) * 4),
             TokenizedPair(1, (1,) * 2, (2,) * 10, (3,) * 10),
             TokenizedPair(2, (1,) * 10, (2,) * 2, (3,) * 2),
             TokenizedPair(3, (1,) * 2, (2,) * 9, (3,) * 9)]
    plain = [p.layout_length(False) for p in pairs]
    shared = [p.layout_length(True) for p in pairs]
    assert plain == [14, 12, 12, 11] and shared == [17, 22, 14, 20]
    assert micro_batches(plain, [0, 1, 2, 3], 2) == [[3, 1], [2, 0]]
    assert micro_batches(shared, [0, 1, 2, 3], 2) == [[2, 0], [3, 1]]


def test_heldout_split_and_schedule():
    pairs = [TokenizedPair(i, (1,), (2,), (3,)) for i in range(20)]
    train, held = split_heldout(pairs, 0.1, seed=1)
    assert len(held) == 2 and len(train) == 18
    assert not {p.index for p in train} & {p.index for p in held}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_then_linear(opt, total_steps=10, warmup_steps=2, end_lr=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_attention_kernel_restricts_the_forward_and_refuses_gpu_kernels_on_cpu(tiny_model_dir,
                                                                                tokenizer):
    from transformers import AutoModelForCausalLM

    from ablate.train.common import TrainingError, attention_kernel

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    seen = []
    model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cuda.math_sdp_enabled(),
                                torch.backends.cuda.flash_sdp_enabled())))
    pairs, _ = tokenize_pairs([row()], tokenizer, 512, 256)
    batch = collate_shared_prompt(pairs, tokenizer.pad_token_id)
    cpu = torch.device("cpu")
    auto = CompletionLogps(model, context=attention_kernel("auto", cpu)).batch_logps(batch)
    math_only = CompletionLogps(model, context=attention_kernel("math", cpu)).batch_logps(batch)
    assert seen == [(True, True), (True, False)]  # only the math kernel inside the second
    assert torch.backends.cuda.flash_sdp_enabled()  # and restored after it
    torch.testing.assert_close(math_only, auto, rtol=1e-5, atol=1e-5)
    with pytest.raises(TrainingError, match="'efficient' needs a CUDA GPU"):
        attention_kernel("efficient", cpu)


def test_training_loop_groups_micro_batches_by_the_layout_length(tmp_path):
    import logging

    from ablate.train.loop import LoopConfig, train_loop

    pairs = [TokenizedPair(0, (1,) * 10, (2,) * 3, (3,) * 4),
             TokenizedPair(1, (1,) * 2, (2,) * 10, (3,) * 10),
             TokenizedPair(2, (1,) * 10, (2,) * 2, (3,) * 2),
             TokenizedPair(3, (1,) * 2, (2,) * 9, (3,) * 9)]
    weight = torch.nn.Linear(1, 1)
    groups = []

    def micro_loss(group):
        groups.append(sorted(group))
        loss = weight(torch.ones(len(group), 1)).sum()
        return loss, {"loss": loss.detach()}

    cfg = LoopConfig(lr=1e-3, warmup_ratio=0.0, epochs=1, batch_size=4, micro_batch_size=2,
                     weight_decay=0.0, max_grad_norm=1.0, save_every_steps=100, seed=0,
                     end_lr=0.0, adam_beta2=0.95)
    train_loop(weight, pairs, cfg, micro_loss, tmp_path, logging.getLogger("test"),
               lambda *a: None, "test", lengths=[p.layout_length(True) for p in pairs])
    assert groups == [[0, 2], [1, 3]]  # by the longer sequence it would be [1, 3], [0, 2]...
    groups.clear()
    (tmp_path / "plain").mkdir()
    train_loop(weight, pairs, cfg, micro_loss, tmp_path / "plain", logging.getLogger("test"),
               lambda *a: None, "test")
    assert groups == [[1, 3], [0, 2]]  # ...as without layout lengths


def test_metrics_log_resume_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    from ablate.train.checkpoints import MetricsLog
    from ablate.train.common import TrainingError

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.7}\n{"step": 2, "loss": 0.6}\n'
                    '{"step": 3, "loss": 0.5}\n{"step": 4, "lo')  # killed mid-write
    log = MetricsLog(path, resume_step=2)
    log.write({"step": 3, "loss": 0.55})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[-1])["loss"] == 0.55
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')  # damage before the end is an error
    with pytest.raises(TrainingError, match="line 2 is not JSON"):
        MetricsLog(path, resume_step=2)

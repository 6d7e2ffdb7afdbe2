"""A training step must not read values back from the device before its one end-of-step
transfer (``StepWork.read``). On a GPU each such read (``.item()``, a boolean-mask index, which
needs ``nonzero``) makes the host wait until every queued kernel has run, so the GPU then idles
while the host queues the next ones. These tests run real DPO and RM steps on CPU under a
dispatch mode that records the operators that would wait on a GPU; collation (host work on host
tensors, by design) is excluded."""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ablate.spec.schema import DPOConfig, RMConfig
from ablate.train import dpo, loop, rm

aten = torch.ops.aten
READS_BACK = {aten._local_scalar_dense, aten.nonzero, aten.is_nonzero, aten.masked_select,
              aten.unique_consecutive, aten._unique2}


def _bool_index(func, args) -> bool:
    if func.overloadpacket not in (aten.index, aten.index_put, aten.index_put_):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
               for i in (args[1] if len(args) > 1 else ()) or ())


HOST_COPIES = ("tolist", "cpu", "numpy")


def _caller() -> str:
    where = [f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in traceback.extract_stack()[:-2]]
    return " <- ".join(reversed(where[-4:]))


class DeviceReads(TorchDispatchMode):
    """Records the operators that would make the host wait for a GPU, while ``active``."""

    def __init__(self):
        super().__init__()
        self.active = False
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.active and (func.overloadpacket in READS_BACK or _bool_index(func, args)):
            self.reads.append(f"{func} at {_caller()}")
        return func(*args, **(kwargs or {}))


def _watch(monkeypatch, mode: DeviceReads, module, collate_names: list[str]):
    """Activate ``mode`` inside ``accumulate_step`` (forward, loss, backward, clipping), except
    while a batch is collated."""
    real_step = loop.accumulate_step

    def watched_step(*args, **kwargs):
        mode.active = True
        try:
            return real_step(*args, **kwargs)
        finally:
            mode.active = False

    monkeypatch.setattr(loop, "accumulate_step", watched_step)
    # these copy to the host without dispatching a watched operator on CPU, where the tensor is
    # already on the host; on a GPU each would wait for the device
    for method in HOST_COPIES:
        real_method = getattr(torch.Tensor, method)

        def recorded(self, *args, _real=real_method, _method=method, **kwargs):
            if mode.active:
                mode.reads.append(f"Tensor.{_method} at {_caller()}")
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, recorded)
    for name in collate_names:
        real = getattr(module, name)

        def host_side(*args, _real=real, **kwargs):
            was, mode.active = mode.active, False
            try:
                return _real(*args, **kwargs)
            finally:
                mode.active = was

        monkeypatch.setattr(module, name, host_side)


def _rows(n=12):
    return [{"prompt": f"Question {i}: say something kind",
             "chosen": "A kind answer. " * (1 + i % 3), "rejected": "No. " * (1 + i % 4)}
            for i in range(n)]


@pytest.mark.parametrize("shared_prompt,precision", [(True, "autocast"), (False, "autocast"),
                                                     (True, "bf16_weights")])
def test_dpo_step_reads_nothing_back_before_the_end(tiny_model_dir, tmp_path, monkeypatch,
                                                    shared_prompt, precision):
    mode = DeviceReads()
    _watch(monkeypatch, mode, dpo, ["collate"])
    cfg = DPOConfig(batch_size=4, micro_batch_size=2, epochs=1, eval_fraction=0.0,
                    shared_prompt=shared_prompt, precision=precision)
    with mode:
        summary = dpo.train_dpo(tiny_model_dir, _rows(), cfg, 1, tmp_path / "run",
                                tmp_path / "cache")
    assert summary["steps"] == 3
    assert mode.reads == []


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_rm_step_reads_nothing_back_before_the_end(tiny_model_dir, tmp_path, monkeypatch,
                                                   shared_prompt):
    mode = DeviceReads()
    _watch(monkeypatch, mode, rm, ["collate"])
    cfg = RMConfig(batch_size=4, micro_batch_size=2, epochs=1, eval_fraction=0.0,
                   shared_prompt=shared_prompt)
    with mode:
        result = rm.train_rm(tiny_model_dir, _rows(), cfg, 1, tmp_path / "run")
    assert result["steps"] == 3
    assert mode.reads == []


@pytest.mark.parametrize("read,seen", [("item", "_local_scalar_dense"),
                                       ("tolist", "Tensor.tolist"), ("cpu", "Tensor.cpu")])
def test_the_watch_sees_a_read_back(tiny_model_dir, tmp_path, monkeypatch, read, seen):
    """The mode does record what it looks for: a micro-batch loss that reads a value back."""
    mode = DeviceReads()
    _watch(monkeypatch, mode, dpo, ["collate"])
    real_loss = dpo.preference_loss

    def loss_with_a_read(*args, **kwargs):
        losses, chosen, rejected = real_loss(*args, **kwargs)
        getattr(losses.sum().detach(), read)()
        return losses, chosen, rejected

    monkeypatch.setattr(dpo, "preference_loss", loss_with_a_read)
    cfg = DPOConfig(batch_size=4, micro_batch_size=4, epochs=1, eval_fraction=0.0)
    with mode:
        dpo.train_dpo(tiny_model_dir, _rows(8), cfg, 1, tmp_path / "run", tmp_path / "cache")
    assert len(mode.reads) == 2 and all(seen in r for r in mode.reads)

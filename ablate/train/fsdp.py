"""Sharded training with FSDP2: the only module of ablate that touches ``torch.distributed``.

A run is one process per device, started by ``torchrun`` (one node) or ``srun`` (several; the
SLURM variables are read when torchrun's are absent)::

    torchrun --nproc_per_node 8 -m ablate.train.fsdp dpo --config step.json --out DIR

Without those variables everything here degrades to a single process, so the recipes call
these helpers unconditionally; checkpoints are ``torch.distributed.checkpoint`` folders either
way, so a run resumes on another number of processes. On CPU the backend is gloo, which
is how the tests run two processes on one machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", "SLURM_LOCALID", default=0)


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def init_from_env() -> bool:
    """Join the process group the launcher describes; False when this is a single process."""
    if dist.is_initialized():
        return True
    size = _env_int("WORLD_SIZE", "SLURM_NTASKS", default=1)
    if size <= 1:
        return False
    os.environ.setdefault("RANK", str(_env_int("RANK", "SLURM_PROCID", default=0)))
    os.environ.setdefault("WORLD_SIZE", str(size))
    os.environ.setdefault("LOCAL_RANK", str(local_rank()))
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError("multi-process run without MASTER_ADDR/MASTER_PORT: launch with "
                           "torchrun, or export them in the sbatch script before srun")
    # GPUs talk over NCCL; the loops' host-side sums (CPU tensors) need gloo beside it
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend)
    return True


def rank_slots(n_items: int) -> tuple[list[int], int]:
    """This process's items of ``n_items`` (every world_size-th, from its rank) and how many slots
    each process runs: the same number everywhere, since sharded forwards and backwards are
    collective (a process with fewer items runs a stand-in whose result it discards)."""
    size = world_size()
    return list(range(rank(), n_items, size)), -(-n_items // size)


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def all_reduce_max(value: int) -> int:
    if not dist.is_initialized():
        return value
    out = torch.tensor([value], dtype=torch.long)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return int(out)


def combine_rows(rows: torch.Tensor, mine: torch.Tensor) -> torch.Tensor:
    """Each process filled the rows ``mine`` (bool ``[N]``, disjoint between processes) of
    ``rows``; return the whole tensor, the same on every process. A sum of the processes' rows
    with zeros elsewhere, so every value arrives exactly."""
    if not dist.is_initialized():
        return rows
    total = torch.where(mine.view(-1, *([1] * (rows.dim() - 1))), rows, torch.zeros_like(rows))
    dist.all_reduce(total)
    return total


@contextlib.contextmanager
def gathered(root: nn.Module):
    """Every parameter of a sharded module gathered on every process for the duration, with no
    collective inside: for ``generate``, whose number of forwards differs between processes
    (each samples its own prompts and stops when they end), so per-layer all-gathers would not
    pair up. Costs the whole model's memory on each process while it lasts. A no-op for a single
    process."""
    if not dist.is_initialized():
        yield root
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    # The root must be initialised as FSDP's root before a submodule runs forward, or the first
    # decoder layer generate calls would make itself the root (torch 2.13 has no public call).
    root._get_fsdp_state()._lazy_init()
    for unit in units:  # the same order on every process: these all-gathers pair up
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)  # layers' forwards keep them whole
    try:
        yield root
    finally:
        for unit in units:
            if unit is not root:  # the root's own default is to stay gathered after forward
                unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    names = set(getattr(hf_model, "_no_split_modules", None) or ())
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"{type(hf_model).__name__} declares no decoder-layer class "
                           "(_no_split_modules); cannot shard it per layer")
    return layers


def shard(root: nn.Module, hf_model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` each decoder layer, then the root (which then owns the embeddings and the
    output layer). bf16 compute with fp32 gradient reduction on GPU; plain fp32 on CPU. A single
    process returns the module moved to ``device``, unsharded."""
    root.to(device)
    if not dist.is_initialized():
        return root
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    for layer in decoder_layers(hf_model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(root, mp_policy=policy)
    return root


def reshard(module: nn.Module) -> None:
    """Put sharded parameters back after a no-grad forward. FSDP2 keeps the root's parameters
    gathered after forward (backward would need them); without a backward they stay gathered,
    and an optimiser built then would hold the gathered copies instead of the shards."""
    if hasattr(module, "reshard"):
        module.reshard()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the gradients to ``max_norm``; the norm before clipping, left on the device."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(norm, "full_tensor"):  # a DTensor when the grads are sharded
        norm = norm.full_tensor()
    return norm


@contextlib.contextmanager
def _single_process_is_meant():
    """Without a process group, torch.distributed.checkpoint warns that it assumes one process:
    here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_train_state(folder: Path, model: nn.Module, optimizer) -> None:
    """Model and optimiser state as a ``torch.distributed.checkpoint`` folder (``sharded``):
    each process writes its shards (a single process the whole), keyed by parameter names, so
    any number of processes reads it back, resharded as it loads."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    with _single_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optim_state},
                 checkpoint_id=str(Path(folder) / "sharded"))


def load_train_state(folder: Path, model: nn.Module, optimizer) -> None:
    """What ``save_train_state`` wrote, by any number of processes, into this run's shards (or
    whole modules for a single process). A ``model.pt`` folder is a single process's checkpoint
    from before every checkpoint was a ``torch.distributed.checkpoint`` folder."""
    folder = Path(folder)
    if (folder / "model.pt").is_file():
        if dist.is_initialized():
            raise RuntimeError(f"{folder} holds a single-process checkpoint in the older "
                               "model.pt format, which cannot be resharded: resume it with one "
                               "process")
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (folder / "sharded").is_dir():
        raise RuntimeError(f"{folder} holds neither sharded/ nor model.pt: the checkpoint is "
                           "incomplete; delete the step's checkpoints/ folder to start it afresh")
    # the optimiser's state is initialised here, so that there are tensors to load into
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    with _single_process_is_meant():
        dcp.load(state, checkpoint_id=str(folder / "sharded"))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on CPU, on the main process (None elsewhere)."""
    if not dist.is_initialized():
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    if not is_main_process():
        return None
    # Tied weights (input and output embeddings) come back as two tensors; keep one name, as
    # the unsharded model's own state dict would.
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - \
        {name for name, _ in model.named_parameters()}
    return {k: v for k, v in state.items() if k not in aliases}


def save_pretrained(root: nn.Module, hf_model: nn.Module, tokenizer, target: Path) -> None:
    """``hf_model``, a child of the sharded ``root``, as a transformers folder ``target`` with the
    tokenizer: the main process writes the gathered weights to a temp folder and renames it into
    place, so a folder at ``target`` is always whole; every process waits for it."""
    child = next(name for name, module in root.named_children() if module is hf_model)
    state = full_state_dict(root)
    if is_main_process():
        state = {k.removeprefix(f"{child}."): v for k, v in state.items()}
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        hf_model.save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    barrier()


def main(argv: list[str] | None = None) -> None:
    """Run one training step's recipe in every process of a torchrun/srun launch."""
    # The process that planned the run downloaded the step's models and data (`ablate fetch`):
    # these processes read them from the caches with the hub offline, so that no node downloads
    # or needs the network. Set before anything imports the hub's libraries, which read it once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import importlib
    import logging

    from ablate.spec.plan import Step
    from ablate.spec.steps import STEP_KINDS, recipe_kind, runner_for
    from ablate.store.context import StepContext
    from ablate.train.stop import STOPPED_FILE, Stopped

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("recipe", choices=[k.recipe for k in STEP_KINDS.values() if k.recipe])
    parser.add_argument("--config", required=True, type=Path,
                        help="the step (JSON, as Step.to_json writes it)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--cache", type=Path, default=Path(".ablate-cache"))
    parser.add_argument("--rows", type=Path, help="preference rows (PPO: prompt rows) (JSONL) to "
                                                  "train on instead of the config's data")
    parser.add_argument("--input", action="append", default=[], metavar="ROLE=DIR",
                        help="an upstream step's folder (PPO: reward_model=...)")
    parser.add_argument("--stop-after-steps", type=int, help=argparse.SUPPRESS)  # tests: a "kill"
    args = parser.parse_args(argv)
    init_from_env()
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING)
    # one line per process in the launcher's log: where it runs and with how many threads
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    print(f"rank {rank()} of {world_size()} on {node}: {torch.get_num_threads()} threads",
          file=sys.stderr, flush=True)
    try:
        kind = recipe_kind(args.recipe)
        step = Step.from_json(json.loads(args.config.read_text()))
        if step.kind != kind.name:
            raise SystemExit(f"{args.config}: a {step.kind} step, not a {kind.name} step")
        inputs = dict(_role_and_dir(text) for text in args.input)
        if args.rows is None:
            runner_for(kind.name)(StepContext(step=step, out_dir=args.out, cache_dir=args.cache,
                                              inputs=inputs))
        else:
            recipe = importlib.import_module(kind.runner.partition(":")[0])
            _train_on_rows(args, step, inputs, recipe)
    except Stopped as stopped:
        # asked to stop (ablate.train.stop): the checkpoint is saved; the launcher reads this
        # file to requeue the job instead of taking the exit for the step's end
        if is_main_process():
            (args.out / STOPPED_FILE).write_text(json.dumps({"step": stopped.step}))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train_on_rows(args, step, inputs: dict[str, Path], recipe) -> None:
    """The step's recipe on the rows of ``--rows`` instead of its data (tests, benchmarks)."""
    from ablate.models import resolve_model

    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    config, model_dir = step.config, resolve_model(step.config.model)
    if step.kind == "train_dpo":
        recipe.train_dpo(model_dir, rows, config.algorithm, config.seed, args.out, args.cache,
                         stop_after_steps=args.stop_after_steps)
    elif step.kind == "train_ppo":
        recipe.train_ppo(model_dir, rows, config.algorithm, config.seed, args.out,
                         reward=config.reward or "reward_model",
                         reward_model_dir=inputs.get("reward_model") and inputs["reward_model"] / "model",
                         stop_after=args.stop_after_steps)
    else:
        recipe.train_rm(model_dir, rows, config.train, config.seed, args.out,
                        stop_after_steps=args.stop_after_steps)


def _role_and_dir(text: str) -> tuple[str, Path]:
    role, sep, folder = text.partition("=")
    if not sep or not role or not folder:
        raise SystemExit(f"--input {text!r}: expected ROLE=DIR, e.g. reward_model=runs/steps/rm")
    return role, Path(folder)


if __name__ == "__main__":
    main()

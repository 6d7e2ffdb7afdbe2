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
from datetime import timedelta
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
    dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout_seconds()))
    return True


def collective_timeout_seconds() -> float:
    """How long a collective waits for the slowest process before the run fails:
    ``$ABLATE_COLLECTIVE_TIMEOUT`` seconds, default an hour. The longest waits are the saves
    (each process writes its part of the model, the others wait at the barrier that publishes
    it: 13B in bf16 is 26 GB, minutes on a slow shared disk) and rank 0 reading a model before
    it broadcasts the weights."""
    text = os.environ.get("ABLATE_COLLECTIVE_TIMEOUT", "3600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise RuntimeError(f"ABLATE_COLLECTIVE_TIMEOUT={text!r}: expected a number of seconds "
                           "above 0")
    return seconds


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


def held_parameters(module: nn.Module) -> list[int]:
    """How many of ``module``'s parameters each process holds (its shards), by rank."""
    mine = sum((p.to_local() if hasattr(p, "to_local") else p).numel()
               for p in module.parameters())
    if not dist.is_initialized():
        return [mine]
    counts = [torch.zeros(1, dtype=torch.long) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([mine]))
    return [int(c) for c in counts]


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
def generating(root: nn.Module):
    """Ready a sharded module for ``generate`` through one of its submodules: the root's own
    parameters (embeddings, final norm, output layer) stay gathered for the duration, and each
    decoder layer gathers its weights for its forward and frees them after, as in training; so
    a process never holds more than the root's parameters and one layer whole. Every process
    must then run the same number of forwards (``generate(synced_gpus=True)`` and as many
    generate calls on each). A no-op for a single process."""
    if not dist.is_initialized():
        yield root
        return
    # The root must be initialised as FSDP's root before a submodule runs forward, or the first
    # decoder layer generate calls would make itself the root (torch 2.13 has no public call).
    root._get_fsdp_state()._lazy_init()
    root.unshard()
    try:
        yield root
    finally:
        root.reshard()


def decoder_layers(hf_model: nn.Module) -> list[nn.Module]:
    names = set(getattr(hf_model, "_no_split_modules", None) or ())
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"{type(hf_model).__name__} declares no decoder-layer class "
                           "(_no_split_modules); cannot shard it per layer")
    return layers


def build_model(auto_class, folder: Path, dtype: torch.dtype = torch.float32, **kwargs) -> nn.Module:
    """``auto_class.from_pretrained(folder)`` for a single process. Under a multi-process launch,
    the model's skeleton instead: parameters on the meta device (no memory), buffers computed on
    the CPU as construction computes them (the rotary inverse frequencies); ``shard`` then gives
    each process its shards of the weights rank 0 reads, so no other process ever holds the
    whole model. ``kwargs`` are config settings (``num_labels=1``)."""
    if not dist.is_initialized():
        return auto_class.from_pretrained(folder, dtype=dtype, **kwargs)
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, **kwargs)
    with init_empty_weights(include_buffers=False):
        model = auto_class.from_config(config, dtype=dtype)
    model.tie_weights()  # init_empty_weights gives each module a parameter of its own
    return model


def frozen_dtype(device: torch.device) -> torch.dtype:
    """What a frozen model (PPO's reference and reward model) is held in: bf16 where several
    processes run on GPUs, since FSDP's mixed precision there computes with a bf16 copy of every
    weight anyway (the same figures in half the memory); fp32 elsewhere, where the compute
    reads the fp32 weights. The paper's code held the weights of all four PPO models in fp32
    and computed in bf16 (hamishivi/EasyLM@dbf2212c:EasyLM/models/llama/llama_train_ppo.py,
    ``dtype='bf16'`` for the four models, whose ``param_dtype`` is fp32 in ``llama_model.py``)."""
    return torch.bfloat16 if dist.is_initialized() and torch.device(device).type == "cuda" \
        else torch.float32


def save_dtype(device: torch.device) -> torch.dtype:
    """What a trained model is saved in: bf16 after training on a GPU, where the forwards ran in
    bf16 and evaluation loads models in bf16 (half the bytes to write and to read back for each
    eval); fp32 on CPU, where they ran in fp32."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def shard(root: nn.Module, hf_model: nn.Module, device: torch.device, *,
          cpu_offload: bool = False) -> nn.Module:
    """``fully_shard`` each decoder layer, then the root (which then owns the embeddings and the
    output layer). bf16 compute with fp32 gradient reduction on GPU; plain fp32 on CPU. A
    skeleton from ``build_model`` is materialised empty and filled with rank 0's weights, each
    process keeping only its shards. ``cpu_offload`` keeps the sharded parameters, their
    gradients and so the optimiser state in CPU memory between uses. A single process returns
    the module moved to ``device``, unsharded."""
    if not dist.is_initialized():
        return root.to(device)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    skeleton = any(p.is_meta for p in root.parameters())
    if not skeleton:
        root.to("cpu" if cpu_offload else device)
    buffers = {name: b.detach().clone() for name, b in root.named_buffers()}
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    options = {"mp_policy": policy}
    if cpu_offload:
        # pinned host memory speeds copies to a GPU, and cannot be had without one
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for layer in decoder_layers(hf_model):
        fully_shard(layer, **options)
    fully_shard(root, **options)
    if skeleton:
        _load_into_shards(root, hf_model, buffers, torch.device("cpu") if cpu_offload else device)
    return root


def _load_into_shards(root: nn.Module, hf_model: nn.Module, buffers: dict[str, torch.Tensor],
                      device: torch.device) -> None:
    """Materialise a sharded skeleton and fill it: rank 0 reads the pretrained weights into CPU
    memory and broadcasts them one tensor at a time, each process keeping its own shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    root.to_empty(device=device)
    with torch.no_grad():
        # non-persistent buffers are in no checkpoint: back to their values at construction
        for name, buffer in root.named_buffers():
            buffer.copy_(buffers[name])
    state: dict[str, torch.Tensor] = {}
    if is_main_process():
        prefix = next((f"{name}." for name, module in root.named_modules()
                       if module is hf_model and name), "")
        # from_pretrained initialises what the folder lacks (a new score head) as one process
        # would, with the same random stream
        whole = type(hf_model).from_pretrained(hf_model.config._name_or_path,
                                               config=hf_model.config, dtype=hf_model.dtype)
        state = {prefix + name: value for name, value in whole.state_dict().items()}
        del whole
    set_model_state_dict(root, state, options=StateDictOptions(full_state_dict=True,
                                                               broadcast_from_rank0=True))
    del state
    # Every process continues from rank 0's random state, as if each had loaded the model itself
    rng = [torch.get_rng_state()]
    dist.broadcast_object_list(rng, src=0)
    torch.set_rng_state(rng[0])


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


def save_pretrained(root: nn.Module, hf_model: nn.Module, tokenizer, target: Path,
                    dtype: torch.dtype = torch.float32) -> None:
    """``hf_model``, a child of the sharded ``root``, as a transformers folder ``target`` with the
    tokenizer, its weights in ``dtype``. Several processes write one safetensors file each (and
    rank 0 the index, config and tokenizer): each tensor is gathered whole on the process that
    owns it alone, one tensor at a time, so no process ever holds the whole model. Everything is
    written to a temp folder renamed into place, so a folder at ``target`` is always whole."""
    child = next((f"{name}." for name, module in root.named_modules()
                  if module is hf_model and name), "")
    tmp = target.parent / f".{target.name}.tmp"
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    # Tied weights (input and output embeddings) are one tensor under two names: keep the
    # first, as the unsharded model's own save does.
    reshard(root)  # parameters as shards, not the gathered copies a last forward may leave
    tensors = [(name.removeprefix(child), p) for name, p in root.named_parameters()]
    tensors += [(f"{prefix}.{name}".lstrip(".").removeprefix(child), buffer)
                for prefix, module in root.named_modules()
                for name, buffer in module.named_buffers(recurse=False)
                if name not in module._non_persistent_buffers_set]
    if not dist.is_initialized():
        state = {name: t.detach().to("cpu", dtype if t.is_floating_point() else t.dtype)
                 for name, t in tensors}
        hf_model.save_pretrained(tmp, state_dict=state)
    else:
        _save_shards(tensors, tmp, dtype)
        if is_main_process():
            hf_model.config.save_pretrained(tmp)
            if getattr(hf_model, "generation_config", None) is not None and \
                    hf_model.can_generate():
                hf_model.generation_config.save_pretrained(tmp)
    barrier()  # every process's file is in before the folder is published
    if is_main_process():
        # the config names the model's dtype (fp32 while it trains); what "auto" loads is the
        # dtype the weights were written in
        saved = json.loads((tmp / "config.json").read_text())
        saved["dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    barrier()


def _save_shards(tensors: list[tuple[str, torch.Tensor]], folder: Path,
                 dtype: torch.dtype) -> None:
    """Each process writes ``model-<k>-of-<n>.safetensors`` holding the tensors it owns (about
    1/n of the bytes, assigned largest first to the process with the fewest); rank 0 writes the
    index transformers reads. A sharded tensor is gathered to its owner only."""
    from safetensors.torch import save_file
    from torch.distributed.tensor import DTensor

    size, me = world_size(), rank()
    owned_bytes = [0] * size
    owner: dict[str, int] = {}
    for name, tensor in sorted(tensors, key=lambda item: -item[1].numel()):
        k = owned_bytes.index(min(owned_bytes))
        owner[name] = k
        owned_bytes[k] += tensor.numel()
    files = [f"model-{k + 1:05d}-of-{size:05d}.safetensors" for k in range(size)]
    mine: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:  # the same order everywhere: the gathers pair up
        whole = _gather_to(tensor.detach(), owner[name]) if isinstance(tensor, DTensor) \
            else tensor.detach()
        if owner[name] == me:
            mine[name] = whole.to("cpu", dtype if whole.is_floating_point() else whole.dtype)
    save_file(mine, str(folder / files[me]), metadata={"format": "pt"})
    if is_main_process():
        total = sum(t.numel() * (dtype.itemsize if t.is_floating_point() else t.element_size())
                    for _, t in tensors)
        (folder / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total},
             "weight_map": {name: files[owner[name]] for name, _ in tensors}}, indent=2))


def _gather_to(param, dst: int) -> torch.Tensor | None:
    """A dim-0 sharded DTensor whole on process ``dst`` (None elsewhere). FSDP2 shards as
    ``torch.chunk`` does, so every process's piece is padded to the first one's rows."""
    local = param.to_local()
    rows = -(-param.shape[0] // world_size())
    padded = local.new_zeros((rows, *param.shape[1:]))
    padded[:local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(world_size())] if rank() == dst else None
    dist.gather(padded, pieces, dst=dst)
    return torch.cat(pieces)[:param.shape[0]] if rank() == dst else None


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

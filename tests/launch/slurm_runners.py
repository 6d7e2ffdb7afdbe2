"""Step runners for the SLURM tests, selected in the jobs by ``ABLATE_RUNNERS`` (jobs inherit the
environment; monkeypatching cannot reach a process SLURM starts).

``weights_eval`` stands in for a benchmark where the real evaluation runner is not needed: its
value is a digest of the evaluated model's weights, so two runs agree only if they trained the
same model. ``ABLATE_TEST_FAIL_BENCHMARK=NAME`` makes that benchmark's evaluation fail.
"""

from __future__ import annotations

import hashlib
import os
import time

from ablate.store import atomic_write_json


def weights_eval(ctx) -> None:
    import torch
    from safetensors.torch import load_file

    from ablate.models import resolve_model

    benchmark = ctx.config.benchmark
    if benchmark == os.environ.get("ABLATE_TEST_FAIL_BENCHMARK"):
        raise RuntimeError(f"benchmark {benchmark} exploded (test hook)")
    folder = ctx.input_model_dir("model") if "model" in ctx.inputs else resolve_model(ctx.config.model)
    # A digest of the exact bytes: a float sum would depend on the thread count's reduction order
    # (SLURM jobs get one thread per allocated CPU, the test process more).
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        for name, tensor in sorted(load_file(path).items()):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    checksum = int(digest.hexdigest()[:15], 16)
    ctx.log.info("weights checksum of %s: %r", folder, checksum)
    atomic_write_json(ctx.out_dir / "result.json",
                      {"benchmark": benchmark, "metric": "weights_checksum", "value": checksum,
                       "torch": torch.__version__})


def paced_train_dpo(ctx) -> None:
    """The real DPO runner, pausing ``ABLATE_TEST_STEP_PAUSE`` seconds after each optimiser step
    so that a test can requeue the job between its first checkpoint and its end (on an idle CPU
    the tiny model trains in a second).

    ``ABLATE_TEST_HOLD_FOR_STOP=1``: a run that starts from no checkpoint holds after its first
    step until it is asked to stop (``ablate.train.stop``), then trains on; it stops after its
    next step. For the time-limit test: SLURM's warning comes tens of seconds early or late."""
    from ablate.train.checkpoints import latest_checkpoint
    from ablate.train.dpo import run_step
    from ablate.train.stop import stop_requested

    pause = float(os.environ.get("ABLATE_TEST_STEP_PAUSE", "1.0"))
    hold = (os.environ.get("ABLATE_TEST_HOLD_FOR_STOP") == "1"
            and latest_checkpoint(ctx.out_dir / "checkpoints") is None)
    report = ctx.progress

    def paced(step, *args, **kwargs):
        report(step, *args, **kwargs)
        if hold and step == 1:
            deadline = time.time() + 600
            while not stop_requested() and time.time() < deadline:
                time.sleep(0.2)
        else:
            time.sleep(pause)

    ctx.progress = paced
    run_step(ctx)


def sleep_train(ctx) -> None:
    """A training step that takes long enough to be cancelled."""
    time.sleep(float(os.environ.get("ABLATE_TEST_SLEEP", "120")))
    (ctx.out_dir / "model").mkdir(exist_ok=True)

"""What a running step is handed: its folder, its inputs' folders, a logger and a progress hook.

Step functions (``ablate.train.*.run_step``, ``ablate.evals.run_step``) take a ``StepContext`` and
never import the launcher, so the same function runs in-process, under submitit and on SLURM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ablate.spec.plan import Step
from ablate.spec.steps import StepConfig


def _no_progress(done: float, total: float | None = None, desc: str | None = None) -> None:
    return None


@dataclass
class StepContext:
    step: Step
    out_dir: Path
    inputs: Mapping[str, Path] = field(default_factory=dict)  # role -> that step's folder
    cache_dir: Path = Path(".ablate-cache")
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("ablate.step"))
    progress: Callable[..., None] = _no_progress  # progress(done, total, desc)

    @property
    def config(self) -> StepConfig:
        """The step's typed config (``ablate.spec.steps``), as expansion built it."""
        return self.step.config

    def input_model_dir(self, role: str = "model") -> Path:
        """The transformers folder an upstream training step wrote (``<its folder>/model``)."""
        if role not in self.inputs:
            raise KeyError(f"step {self.step.name!r} has no input {role!r} "
                           f"(inputs: {', '.join(self.inputs) or 'none'})")
        return self.inputs[role] / "model"

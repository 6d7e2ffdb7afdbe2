"""The run store: one folder per step, done when DONE.json exists, results written atomically."""

from ablate.store.context import StepContext
from ablate.store.store import (
    RunStore, StepBusy, atomic_write_json, atomic_write_jsonl, atomic_write_text, environment,
    read_json,
)

__all__ = ["RunStore", "StepBusy", "StepContext", "atomic_write_json", "atomic_write_jsonl",
           "atomic_write_text", "environment", "read_json"]

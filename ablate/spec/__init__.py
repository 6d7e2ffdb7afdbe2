"""Grid specs: typed configs, strict loading, and expansion into a plan of shared steps."""

from ablate.spec.expand import check_names, expand
from ablate.spec.load import SpecError, load_grid, load_model
from ablate.spec.plan import Cell, Plan, Step, config_hash
from ablate.spec.schema import GridSpec, ModelSpec

__all__ = ["Cell", "GridSpec", "ModelSpec", "Plan", "SpecError", "Step", "check_names",
           "config_hash", "expand", "load_grid", "load_model"]

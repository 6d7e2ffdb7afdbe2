"""The named preference datasets, mixtures and prompt sets, with where each comes from.

Names are what grids use (``DataRef.name``). ``paper_rows`` is the size the paper (Ivison et al.,
2024) gives a data set (Table 1's counts, Table 2's 60,908-pair downsamples), for ``ablate data
show`` to compare against and for the planner to size a step before its data is downloaded.
``revision`` is the hub revision the loader asks for; a commit hash pins it, ``main`` is used
where no commit could be checked from here. ``local_files`` are glob patterns, relative to ``$ABLATE_DATA_DIR`` (or to the shipped
slices folder when ``packaged``), that replace the hub when present.

The paper trained on the published splits of ``allenai/tulu-2.5-preference-data`` (one file per
data set): those are the ``tulu25-*`` names, the paper grids' default. The other names rebuild each
data set from its raw source with ablate's converters: a named alternative, not the paper's pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ablate.data import converters as c
from ablate.data import ultrafeedback as uf


@dataclass(frozen=True)
class Source:
    name: str
    hub_id: str
    convert: Callable
    licence: str
    group: str  # web | human | synthetic | slice | mixture
    revision: str = "main"
    config: str | None = None
    data_dir: str | None = None
    hub_splits: dict[str, str] = field(default_factory=lambda: {"train": "train"})
    # native split -> the hub files that hold it, where one repository keeps many data sets
    hub_data_files: dict[str, str] = field(default_factory=dict)
    local_files: dict[str, tuple[str, ...]] = field(default_factory=dict)
    packaged: bool = False
    # Part of the conversion cache key: bump when a converter's rows or skip counts change.
    converter_version: int = 1
    paper_rows: int | None = None
    restrict_to_prompts_of: str | None = None  # keep only prompts that this other dataset has
    # True: without a test split, a share of prompts is held out as one (rows.is_held_out);
    # False: train is every row, as the paper trained on every pair of a published split
    hold_out_test: bool = True
    # a published split of the paper's: the registry name that rebuilds the same data set from
    # its raw source (the paper's tables know both as one data set)
    raw_name: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Mixture:
    """Datasets concatenated with per-component row caps (each component's weight is its size)."""

    name: str
    components: tuple[tuple[str, int | None], ...]
    note: str = ""
    # how components are drawn and shuffled: part of a mixture's converter version
    mixing_version: int = 2


@dataclass(frozen=True)
class PromptSource:
    name: str
    licence: str
    hub_id: str | None = None
    convert: Callable | None = None
    revision: str = "main"
    config: str | None = None
    split: str = "train"
    local_files: tuple[str, ...] = ()
    packaged: bool = False
    from_preferences: str | None = None  # the prompts of this preference dataset
    converter_version: int = 1
    raw_name: str | None = None  # as Source.raw_name, for the paper's prompt sets
    # as Source.paper_rows: Table 4's "60K prompts" (the 60,908 of UltraFeedback, and the mixed
    # set downsampled to that size), Figure 3's "20K prompts"
    paper_rows: int | None = None
    note: str = ""


TULU25_PROMPTS = "allenai/tulu-2.5-prompts"
TULU25_PREFERENCES = "allenai/tulu-2.5-preference-data"
# main at 6e87e7b ("fix uf files"), the latest commit whose files were described publicly; the
# UltraFeedback files were replaced there after the paper, and which version its runs read is not
# recorded; a grid that wants the earlier files names them as its own hub data (`hub:` this id,
# `revision: adf4e275d5c7ef90a009e95f5f8d0b161fb1e95d`, `split:`, `format: chat`).
# Another revision is other rows: bump the converter_version of `tulu25` with it (step ids).
TULU25_PREFERENCES_REVISION = "6e87e7ba11eeb2a21db459cf13267f62d1feea23"


def tulu25(split: str, raw_name: str, group: str, licence: str, paper_rows: int | None = None,
           note: str = "") -> Source:
    """One published split of the paper's preference data, as the paper trained on it (every
    row, no held-out share). On the hub it is the file ``data/<split>-*.jsonl`` (the card: "each
    dataset exists in one file under the data/ directory"); offline, the same file under
    ``$ABLATE_DATA_DIR/tulu-2.5-preference-data/data/`` (a copy of the repository)."""
    name = "tulu25-" + split.replace("_", "-")
    return Source(name, TULU25_PREFERENCES, c.tulu25_pairs(name),
                  licence=f"ODC-BY (the collection); {licence}", group=group, revision=TULU25_PREFERENCES_REVISION,
                  hub_splits={"train": split}, hub_data_files={"train": f"data/{split}-*.jsonl"},
                  local_files={"train": (f"tulu-2.5-preference-data/data/{split}-*.jsonl",)},
                  paper_rows=paper_rows, hold_out_test=False, raw_name=raw_name,
                  note=f"split {split} of {TULU25_PREFERENCES}" + (f"; {note}" if note else ""))


# Table 1's rows (and Tables 2 and 3's data) -> the split the paper trained on, each with the
# raw-source rebuild of its data set (a downsample's is the whole set's). Split names: the
# dataset card's split list (huggingface.co/datasets/allenai/tulu-2.5-preference-data, README) and
# allenai/open-instruct docs/data/preference-data.md ("Tulu 2.5 Data", one entry per split); the
# UltraFeedback split the paper's commands name: hamishivi/EasyLM@dbf2212
# docs/paper_notes/unpacking_dpo_and_ppo.md (hf_split='ultrafeedback_mean_aspects'). Each split's
# size on the hub equals Table 1's count except ultrafeedback_overall (58,933 at this revision).
PAPER_SPLITS: list[Source] = [
    tulu25("shp_2", "shp-2", "web", "Reddit data: Reddit API terms", 500_000),
    tulu25("stack_exchange_paired", "stack-exchange", "web", "CC-BY-SA-4.0", 500_000),
    tulu25("prm800k_pairs_phase2", "prm800k", "human", "MIT", 6_949,
           note="solution-level pairs from phase 2: ground truth vs a solution with an error"),
    tulu25("chatbot_arena_2023", "chatbot-arena-2023", "human",
           "prompts CC-BY-4.0, model outputs CC-BY-NC-4.0", 20_465),
    tulu25("chatbot_arena_2024", "chatbot-arena-2024", "human", "Apache-2.0", 34_269),
    tulu25("alpaca_farm_human_pref", "alpacafarm-human", "human", "CC-BY-NC-4.0", 9_686),
    tulu25("hh_rlhf", "hh-rlhf", "human", "MIT", 158_530),
    tulu25("helpsteer", "helpsteer", "human", "CC-BY-4.0", 9_270),
    tulu25("alpaca_farm_gpt4_pref", "alpacafarm-gpt4", "synthetic", "CC-BY-NC-4.0", 19_465),
    tulu25("capybara", "capybara-7k", "synthetic", "Apache-2.0", 7_563),
    tulu25("orca_dpo_pairs", "orca-pairs", "synthetic", "Apache-2.0", 12_859),
    tulu25("nectar", "nectar", "synthetic",
           "Apache-2.0 (outputs also under the generating models' terms)", 180_099),
    tulu25("ultrafeedback_overall", "ultrafeedback-overall", "synthetic", "MIT", 60_908,
           note="H4's overall-score binarization on the fine-grained set's prompts"),
    tulu25("ultrafeedback_mean_aspects", "ultrafeedback-fg", "synthetic", "MIT", 60_908,
           note="the fine-grained (mean of aspects) binarization"),
    # Table 2's PPO data: random 60,908-pair downsamples of the large sets
    tulu25("stack_exchange_60k", "stack-exchange", "web", "CC-BY-SA-4.0", 60_908,
           note="Table 2's 60,908-pair downsample"),
    tulu25("hh_rlhf_60k", "hh-rlhf", "human", "MIT", 60_908,
           note="Table 2's 60,908-pair downsample"),
    tulu25("nectar_60k", "nectar", "synthetic", "Apache-2.0", 60_908,
           note="Table 2's 60,908-pair downsample"),
    # Table 3's 'Mix': HelpSteer, PRM800k, HH-RLHF, Nectar, StackExchange and UltraFeedback, the
    # last four downsampled to 60,908 (4 x 60,908 + 9,270 + 6,949 = 259,851 rows)
    tulu25("preference_big_mixture", "rm-mix", "mixture", "per component (see the card)",
           259_851, note="Table 3's Mix of six sets"),
]
TULU25_PROMPTS_REVISION = "de267afac62d4131ce50f8529c6d6a4f29c5787b"

SOURCES: dict[str, Source] = {s.name: s for s in [
    # web
    Source("shp-2", "stanfordnlp/SHP-2", c.shp2, group="web", paper_rows=500_000,
           converter_version=2,
           hub_splits={"train": "train", "test": "test"},
           licence="Reddit data: Reddit API terms; StackExchange data: CC-BY-SA-4.0",
           note="the paper downsamples to 500k (set max_rows)"),
    Source("stack-exchange", "lvwerra/stack-exchange-paired", c.stack_exchange_paired,
           group="web", paper_rows=500_000, licence="CC-BY-SA-4.0",
           note="the paper downsamples to 500k (set max_rows)"),
    # human
    Source("prm800k", "openai/prm800k (GitHub: prm800k/data/phase2_*.jsonl)",
           c.prm800k_solution_pairs, group="human", paper_rows=6_949, licence="MIT",
           converter_version=4,
           local_files={"train": ("prm800k/phase2_train*.jsonl",),
                        "test": ("prm800k/phase2_test*.jsonl",)},
           hub_splits={"train": "phase2_train", "test": "phase2_test"},
           note="the paper's pairs rebuilt from the raw phase-2 release (ground-truth solution vs a "
                "solution with an error); the release is on GitHub only, so it needs a local copy "
                "(ABLATE_DATA_DIR)"),
    Source("prm800k-steps", "openai/prm800k (step-level, denormalized)", c.prm800k_pairs,
           group="human", licence="MIT", converter_version=3,
           hub_splits={"train": "phase2_train", "test": "phase1_test"},
           local_files={"train": ("prm800k_stepwise_critic/phase2_train*.parquet",),
                        "test": ("prm800k_stepwise_critic/phase1_test*.parquet",)},
           note="pairs of a good and a bad step after the same prefix; the hub id names the "
                "denormalized step-level layout (columns instruction, responses, next_response, "
                "rating) and needs a local copy (ABLATE_DATA_DIR); not the paper's construction "
                "(solution-level pairs, `prm800k`)"),
    Source("chatbot-arena-2023", "lmsys/chatbot_arena_conversations", c.chatbot_arena_2023,
           group="human", paper_rows=20_465,
           licence="prompts CC-BY-4.0, model outputs CC-BY-NC-4.0 (gated: accept terms on the hub)"),
    Source("chatbot-arena-2024", "lmsys/lmsys-arena-human-preference-55k", c.chatbot_arena_2024,
           group="human", paper_rows=34_269, licence="Apache-2.0"),
    Source("alpacafarm-human", "tatsu-lab/alpaca_farm", c.alpaca_farm("alpacafarm-human"),
           group="human", paper_rows=9_686, config="alpaca_human_preference",
           hub_splits={"train": "preference"}, licence="CC-BY-NC-4.0"),
    Source("hh-rlhf", "Anthropic/hh-rlhf", c.hh_rlhf("hh-rlhf"), group="human",
           paper_rows=158_530, hub_splits={"train": "train", "test": "test"}, licence="MIT",
           local_files={"train": ("hh_rlhf/*/train.jsonl.gz",), "test": ("hh_rlhf/*/test.jsonl.gz",)}),
    Source("helpsteer", "nvidia/HelpSteer", c.helpsteer, group="human", paper_rows=9_270,
           converter_version=3,
           hub_splits={"train": "train", "test": "validation"}, licence="CC-BY-4.0",
           note="per prompt: best mean of the aspects except verbosity vs a random lower one"),
    # synthetic
    Source("alpacafarm-gpt4", "tatsu-lab/alpaca_farm", c.alpaca_farm("alpacafarm-gpt4"),
           group="synthetic", paper_rows=19_465, config="alpaca_gpt4_preference",
           hub_splits={"train": "preference"}, licence="CC-BY-NC-4.0"),
    Source("capybara-7k", "argilla/distilabel-capybara-dpo-7k-binarized", c.capybara,
           group="synthetic", paper_rows=7_563, licence="Apache-2.0"),
    Source("orca-pairs", "Intel/orca_dpo_pairs", c.orca_pairs, group="synthetic",
           paper_rows=12_859, licence="Apache-2.0"),
    Source("nectar", "berkeley-nest/Nectar", c.nectar, group="synthetic", paper_rows=180_099,
           converter_version=3,
           licence="Apache-2.0 (outputs also under the generating models' terms)",
           note="top-ranked of 7 answers vs a random lower-ranked one"),
    Source("ultrafeedback-overall", "HuggingFaceH4/ultrafeedback_binarized", uf.ultrafeedback_h4,
           group="synthetic", paper_rows=60_908, licence="MIT",
           hub_splits={"train": "train_prefs", "test": "test_prefs"},
           restrict_to_prompts_of="ultrafeedback-fg",
           note="H4's overall-score binarization, restricted to the fine-grained set's prompts"),
    Source("ultrafeedback-fg", "argilla/ultrafeedback-binarized-preferences-cleaned",
           uf.ultrafeedback_argilla_cleaned, group="synthetic", paper_rows=60_908, licence="MIT",
           revision="7954623b01b203283b386d4f3184c1d7d8c7e213",
           note="best mean of the 4 aspect ratings vs a random lower mean; ties and TruthfulQA "
                "prompts removed"),
    Source("ultrafeedback-fg-raw", "openbmb/UltraFeedback", uf.ultrafeedback_mean_aspects,
           group="synthetic", licence="MIT", converter_version=3,
           note="the fine-grained binarization rebuilt from the raw ratings (keeps all 4 aspects)"),
    # shipped slices (see ablate/data/slices/LICENSES.md)
    Source("ultrafeedback-slice", "trl-lib/ultrafeedback_binarized", uf.ultrafeedback_trl_slice,
           group="slice", packaged=True, licence="MIT",
           local_files={"train": ("ultrafeedback_train.jsonl.gz",),
                        "test": ("ultrafeedback_test.jsonl.gz",)},
           note="200 + 50 rows of a seed-42 sample of trl-lib/ultrafeedback_binarized"),
    Source("hh-rlhf-slice", "Anthropic/hh-rlhf", c.hh_rlhf("hh-rlhf"), group="slice",
           packaged=True, licence="MIT",
           local_files={"train": ("hh_rlhf_helpful_base_train.jsonl.gz",),
                        "test": ("hh_rlhf_helpful_base_test.jsonl.gz",)},
           note="rows 0-199 (train) and 200-249 (test) of HH-RLHF helpful-base test"),
    Source("hh-rlhf-refusals-slice", "Anthropic/hh-rlhf", c.hh_rlhf("hh-rlhf"), group="slice",
           packaged=True, licence="MIT",
           local_files={"train": ("hh_rlhf_refusals_train.jsonl.gz",),
                        "test": ("hh_rlhf_refusals_test.jsonl.gz",)},
           note="the HH-RLHF harmless-base test pairs whose chosen reply declines and whose "
                "rejected reply does not (ablate.data.make_slices.chosen_declines): the first "
                "128 (train) and the other 62 (test)"),
    *PAPER_SPLITS,
]}

MIXTURES: dict[str, Mixture] = {m.name: m for m in [
    Mixture("rm-mix", (("ultrafeedback-fg", 60_908), ("helpsteer", None), ("nectar", 60_908),
                       ("stack-exchange", 60_908), ("hh-rlhf", 60_908), ("prm800k", None)),
            note="the 'Mix' reward-model data of Table 3: the best-performing sources, the large "
                 "ones downsampled to 60,908 pairs"),
]}

PROMPT_SETS: dict[str, PromptSource] = {p.name: p for p in [
    PromptSource("ultrafeedback-prompts", licence="MIT", from_preferences="ultrafeedback-fg",
                 paper_rows=60_908, note="the prompts of the fine-grained UltraFeedback set"),
    PromptSource("gsm8k-train", licence="MIT", hub_id="openai/gsm8k", config="main",
                 convert=uf.gsm8k_prompts, local_files=("gsm8k/train.jsonl",), paper_rows=7_473),
    PromptSource("gsm8k-train-slice", licence="MIT", hub_id="openai/gsm8k", config="main",
                 convert=uf.gsm8k_prompts, packaged=True, local_files=("gsm8k_train.jsonl.gz",),
                 note="the first 200 GSM8k train questions, shipped"),
    PromptSource("math-mined", licence="ODC-BY", hub_id=TULU25_PROMPTS,
                 revision=TULU25_PROMPTS_REVISION, split="math_prompts_20k",
                 convert=uf.chat_prompts, paper_rows=20_000,
                 note="math prompts mined from several datasets (hub only)"),
    # The paper's PPO prompts for Tables 3-5: hamishivi/EasyLM@dbf2212
    # docs/paper_notes/unpacking_dpo_and_ppo.md (tulu_prompt_dataset.hf_split='ultrafeedback_prompts')
    PromptSource("tulu25-ultrafeedback-prompts", licence="ODC-BY", hub_id=TULU25_PROMPTS,
                 revision=TULU25_PROMPTS_REVISION, split="ultrafeedback_prompts",
                 convert=uf.chat_prompts, raw_name="ultrafeedback-prompts", paper_rows=60_908,
                 note="the UltraFeedback prompts the paper's PPO ran on (hub only)"),
    PromptSource("mixed", licence="ODC-BY", hub_id=TULU25_PROMPTS,
                 revision=TULU25_PROMPTS_REVISION, split="ultrafeedback_code_math_prompts",
                 convert=uf.chat_prompts, paper_rows=60_908,
                 note="UltraFeedback + math + code prompts, downsampled to the UltraFeedback size"),
]}


def dataset_names() -> list[str]:
    return sorted([*SOURCES, *MIXTURES])


def prompt_set_names() -> list[str]:
    return sorted(PROMPT_SETS)


def converter_version(name: str, prompts: bool = False) -> str:
    """The version of the conversion a registry name's rows go through (``prompts``: a prompt
    set's): part of what the rows are, so of a training step's id. A mixture's lists its
    components'."""
    if prompts:
        source = PROMPT_SETS[name]
        if source.from_preferences:
            return converter_version(source.from_preferences)
        return str(source.converter_version)
    if name in MIXTURES:
        mixture = MIXTURES[name]
        return f"mix{mixture.mixing_version};" + ",".join(
            f"{part}:{converter_version(part)}" for part, _ in mixture.components)
    return str(SOURCES[name].converter_version)


def published_rows(name: str | None, prompts: bool = False) -> int | None:
    """The rows a registry data set has as the paper used it (``Source.paper_rows``), where
    known: a size to plan with before the data is downloaded."""
    source = (PROMPT_SETS if prompts else SOURCES).get(name or "")
    return source.paper_rows if source else None


def paper_data_set(name: str, prompts: bool = False) -> str:
    """The one registry name under which the paper's tables know a data set (``prompts``: a
    prompt set): a published split's raw-source rebuild (``raw_name``), else the name itself, so
    that a ``tulu25-*`` split and its rebuild find the same paper row."""
    source = (PROMPT_SETS if prompts else SOURCES).get(name)
    return getattr(source, "raw_name", None) or name


def origin(name: str, prompts: bool = False) -> str:
    """Where a registry name's rows come from, in one line: the hub repository at its revision
    and the split (or files) read, or a mixture's components, or the preference data whose
    prompts a prompt set is."""
    if prompts:
        source = PROMPT_SETS[name]
        if source.from_preferences:
            return f"the prompts of {source.from_preferences} ({origin(source.from_preferences)})"
        return f"{source.hub_id}@{source.revision[:12]}, split {source.split}"
    if name in MIXTURES:
        return "mixture of " + ", ".join(
            part + (f" (up to {rows:,})" if rows else "") for part, rows in MIXTURES[name].components)
    source = SOURCES[name]
    if source.packaged:
        return f"shipped slice of {source.hub_id}"
    return f"{source.hub_id}@{source.revision[:12]}, split {source.hub_splits['train']}"

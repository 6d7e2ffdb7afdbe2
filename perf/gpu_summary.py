"""A GPU check's figures as one Markdown page, against issue 3's GPU targets.

    python perf/gpu_summary.py OUT_DIR [--out OUT_DIR/summary.md]

OUT_DIR holds what ``perf/gpu_check.sh`` wrote (any of env_gpu.json, steps.json, dpo_gpu.json,
rm_gpu.json, dpo_long_gpu.json, profile_gpu.json, syncs_gpu.json, generate_gpu.json), loose or
bundled in results.tgz. Targets: ablate's DPO and RM trainers at least 2x TRL's pairs/s, and at
least 40 % useful-FLOP utilisation, read strictly: 8 x params x real tokens over the reference
pass plus the training epoch, at the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

RATIO_TARGET = 2.0
UTILISATION_TARGET = 0.40
FILES = ("env_gpu", "steps", "dpo_gpu", "rm_gpu", "dpo_long_gpu", "profile_gpu", "syncs_gpu",
         "generate_gpu")


def load_results(folder: Path) -> dict[str, dict]:
    """Each file's JSON by its stem; loose files win over the bundle."""
    found: dict[str, dict] = {}
    bundle = folder / "results.tgz"
    if bundle.is_file():
        with tarfile.open(bundle) as tar:
            for member in tar.getmembers():
                stem = Path(member.name).stem
                if member.isfile() and stem in FILES:
                    found[stem] = json.load(tar.extractfile(member))
    for stem in FILES:
        path = folder / f"{stem}.json"
        if path.is_file():
            found[stem] = json.loads(path.read_text())
    return found


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def num(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def changed_settings(side: dict, base: dict) -> str:
    """The settings in which a variant differs from ablate's main side."""
    mine, main = side.get("settings", {}), base.get("settings", {})
    diff = [f"{k}={v}" for k, v in mine.items() if main.get(k) != v]
    return ", ".join(diff) or "defaults"


# utilisation columns: DPO's strict figure counts its reference pass (2·P·T) with its seconds,
# then the training loop alone two ways; the RM has no reference pass
UTILISATION = {
    "dpo": (("8·P·T / (ref+train)", "flop_utilisation"),
            ("6·P·T / train", "train_flop_utilisation"),
            ("8·P·T / train", "flop_utilisation_over_train_seconds")),
    "rm": (("6·P·T / train", "flop_utilisation"),),
}


def header(benchmark: str) -> str:
    names = [name for name, _ in UTILISATION[benchmark]]
    columns = ["side", "settings", "s (ref + train)", "pairs/s", "vs TRL", *names, "peak GPU GiB"]
    return f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}"


def side_row(benchmark: str, name: str, side: dict, settings: str, ratio) -> str:
    columns = UTILISATION[benchmark]
    if "error" in side:
        return f"| {name} | {settings} | failed: {side['error'][:120]} |{' |' * (4 + len(columns))}"
    ref = side.get("ref_seconds")
    seconds = num(side["seconds"]) + (f" ({num(ref)} + {num(side['train_seconds'])})"
                                      if ref is not None else "")
    cells = [name, settings, seconds, num(side.get("pairs_per_second")),
             "–" if ratio is None else f"{ratio:.2f}×",
             *(pct(side.get(key)) for _, key in columns),
             num(side.get("peak_gpu_allocated_gib"), 1)]
    return f"| {' | '.join(cells)} |"


def comparison(benchmark: str, result: dict) -> list[str]:
    """Rows of one benchmark: ablate, its variants, TRL (when it ran)."""
    ablate = result["ablate"]
    rows = [side_row(benchmark, "ablate", ablate, "defaults", result.get("ratio"))]
    for variant in result.get("variants", []):
        label = changed_settings(variant, ablate) if "error" not in variant else \
            ", ".join(f"{k}={v}" for k, v in variant["settings"].items())
        rows.append(side_row(benchmark, "ablate", variant, label, variant.get("ratio_vs_trl")))
    if result.get("trl"):
        rows.append(side_row(benchmark, "TRL", result["trl"], "precompute_ref_log_probs"
                             if "ref_seconds" in result["trl"] else "defaults", None))
    return rows


def sides(result: dict | None) -> list[tuple[str, dict]]:
    """(settings label, side) of ablate's main side and each variant that ran."""
    if not result:
        return []
    ablate = result["ablate"]
    return [("defaults", ablate)] + [(changed_settings(v, ablate), v)
                                     for v in result.get("variants", []) if "error" not in v]


def verdicts(results: dict[str, dict]) -> list[str]:
    lines = []
    for key, name in (("dpo_gpu", "DPO"), ("rm_gpu", "RM")):
        result = results.get(key)
        if not result or result.get("ratio") is None:
            lines.append(f"- {name} ≥ {RATIO_TARGET:g}× TRL: not measured")
            continue
        ratios = [(result["ratio"], "defaults")] + [
            (side["ratio_vs_trl"], label) for label, side in sides(result)[1:]
            if side.get("ratio_vs_trl") is not None]
        best, label = max(ratios)
        verdict = "met" if result["ratio"] >= RATIO_TARGET else (
            f"met only with {label}" if best >= RATIO_TARGET else "not met")
        lines.append(f"- {name} ≥ {RATIO_TARGET:g}× TRL: **{verdict}** (defaults "
                     f"{result['ratio']:.2f}×; best {best:.2f}× with {label})")
    rm = [(side["flop_utilisation"], label) for label, side in sides(results.get("rm_gpu"))
          if side.get("flop_utilisation") is not None]
    if rm:
        lines.append("- RM useful-FLOP utilisation (6·P·T over training seconds): "
                     + "; ".join(f"{pct(u)} with {label}" for u, label in rm))
    measured = [(side["flop_utilisation"], f"{key} with {label}")
                for key in ("dpo_gpu", "dpo_long_gpu") for label, side in sides(results.get(key))
                if side.get("flop_utilisation") is not None]
    if not measured:
        lines.append(f"- ≥ {pct(UTILISATION_TARGET)} useful-FLOP utilisation: not measured")
    else:
        best, where = max(measured)
        defaults = [u for u, w in measured if w.endswith("with defaults")]
        verdict = "met" if defaults and max(defaults) >= UTILISATION_TARGET else (
            f"met only in {where}" if best >= UTILISATION_TARGET else "not met")
        lines.append(f"- ≥ {pct(UTILISATION_TARGET)} useful-FLOP utilisation (8·P·T over "
                     f"reference + training seconds): **{verdict}** (defaults "
                     f"{pct(max(defaults)) if defaults else '–'}; best {pct(best)}, {where})")
    return lines


def summarise(results: dict[str, dict]) -> str:
    env = results.get("env_gpu", {})
    first = next((results[k] for k in ("dpo_gpu", "rm_gpu", "dpo_long_gpu") if k in results), {})
    out = [f"# GPU check: {first.get('device') or env.get('device') or 'unknown device'}", "",
           f"torch {first.get('torch') or env.get('versions', {}).get('torch', '?')}; "
           f"model parameters {first.get('params', '–')}; bf16 peak "
           f"{num(first['peak_bf16_flops'] / 1e12, 0) if first.get('peak_bf16_flops') else '–'}"
           " TFLOP/s", "",
           "## Against the targets", "", *verdicts(results), ""]
    for key, title in (("dpo_gpu", "DPO against TRL"), ("rm_gpu", "RM against TRL"),
                       ("dpo_long_gpu", "DPO, the long epoch (ablate only)")):
        if key in results:
            result = results[key]
            out += [f"## {title}: {result.get('pairs')} pairs, {result.get('real_tokens')} real "
                    f"tokens, batch {result.get('batch_size')} / micro-batch "
                    f"{result.get('micro_batch_size')}", "", header(key.split("_")[0]),
                    *comparison(key.split("_")[0], result), ""]
    if "profile_gpu" in results:
        out += ["## One DPO step, by mode (`perf/dpo_step_profile.py`)", "",
                "| mode | s/step | 6·P·T / step time | GPU busy |", "|---|---|---|---|"]
        for mode in results["profile_gpu"].get("modes", []):
            profile = mode.get("profile") or {}
            out.append(f"| {mode['mode']} | {num(mode.get('seconds_per_step'), 3)} | "
                       f"{pct(mode.get('train_flop_utilisation'))} | "
                       f"{pct(profile.get('gpu_busy_fraction'))} |")
        out.append("")
    if "syncs_gpu" in results:
        out += ["## Synchronising calls inside a training step (`perf/sync_check.py`)", ""]
        syncs = results["syncs_gpu"]
        for recipe in syncs.get("recipes", []):
            out.append(f"- {recipe.get('recipe')}: " + (
                "failed" if "error" in recipe else
                f"{recipe['synchronising_calls']} over {recipe['steps']} steps "
                f"{recipe.get('calls') or ''}"))
        if "skipped" in syncs:
            out.append(f"- skipped: {syncs['skipped']}")
        out.append("")
    if "generate_gpu" in results:
        generate = results["generate_gpu"]
        out += [f"## Generation: {generate.get('tokens_per_second')} tokens/s "
                f"({generate.get('prompts')} prompts × {generate.get('max_new_tokens')} tokens)",
                ""]
    if "steps" in results:
        steps = results["steps"]
        out += [f"## Steps ({steps.get('total_seconds')} s of a {steps.get('budget_seconds')} s "
                "budget)", "", ", ".join(f"{s['step']} {s['status']} {s['seconds']} s"
                                         for s in steps.get("steps", [])), ""]
    return "\n".join(out)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path, help="also write the page here")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"{args.folder}: no such folder")
    page = summarise(load_results(args.folder))
    print(page)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(page + "\n")
        tmp.replace(args.out)
    return page


if __name__ == "__main__":
    main()

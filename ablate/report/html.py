"""One self-contained HTML page: every table and figure (PNG as base64), no network needed.

Each number shows its change over the SFT baseline and its 95% CI on a second line, the best of
its column in bold. Clicking or hovering a cell shows its per-benchmark scores, the paired test,
seeds, run ids, config and a few items' prompts and model outputs, with a link to the full
``outputs.jsonl`` in the store.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

from ablate.report.categories import label
from ablate.report.frame import Results
from ablate.report.groups import Stat
from ablate.report.render import MISSING, vs_paper
from ablate.report.tables import NOISE_MARK, TableResult, fmt

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{padding:3px 8px;border-bottom:1px solid #ddd}
th{border-bottom:2px solid #444;text-align:left}td.num{text-align:right;cursor:pointer}
td:not(.num){white-space:nowrap}
td.better{background:#d6e4f7}td.worse{background:#fbe0c8}td.missing{color:#b00}
tr.summary td{border-top:2px solid #444;font-weight:600}tr.baseline td{border-bottom:2px solid #444}
td.num:hover,td.sel{outline:2px solid #333}.notes{font-size:.85em;color:#555}
td.best .v{font-weight:700}td .sub{display:block;font-size:.72em;color:#555;white-space:nowrap}
#detail .ex{margin:.6em 0;border-top:1px solid #ddd}#detail pre.prompt{max-height:8em}#detail .lbl{color:#555;font-size:.9em}
#detail{position:fixed;right:1em;top:1em;width:420px;max-height:92vh;overflow:auto;background:#fff;
border:1px solid #999;box-shadow:0 2px 8px #0003;padding:.8em;font-size:.85em;display:none}
#detail pre{white-space:pre-wrap;background:#f6f6f6;padding:4px;max-height:14em;overflow:auto}
img{max-width:100%;border:1px solid #eee}
"""

SCRIPT = """
const panel = document.getElementById('detail');
function esc(s){return String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));}
function show(td, pin){
  const d = DETAILS[td.dataset.id]; if(!d) return;
  if(pin){document.querySelectorAll('td.sel').forEach(e => e.classList.remove('sel')); td.classList.add('sel');}
  let h = '<b>' + esc(d.title) + '</b><br>' + esc(d.summary);
  if(d.benchmarks.length){h += '<table><tr><th>benchmark</th><th>score</th><th>95% CI</th><th>Δ SFT</th></tr>';
    for(const b of d.benchmarks){h += '<tr><td>'+esc(b[0])+'</td><td>'+esc(b[1])+'</td><td>'+esc(b[2])+'</td><td>'+esc(b[3])+'</td></tr>';}
    h += '</table>';}
  h += '<div>seeds: ' + esc(d.seeds) + '</div><div>run ids: <code>' + esc(d.runs) + '</code></div>';
  for(const ex of d.examples){
    h += '<div class="ex"><a href="' + esc(ex.href) + '">' + esc(ex.name) + '</a> ' + esc(ex.score)
      + '<div class="lbl">prompt</div><pre class="prompt">' + esc(ex.prompt) + '</pre>'
      + '<div class="lbl">' + esc(ex.output_label) + '</div><pre class="output">' + esc(ex.output) + '</pre></div>';}
  h += '<details><summary>config</summary><pre>' + esc(d.config) + '</pre></details>';
  panel.innerHTML = h; panel.style.display = 'block';
  // a prompt's own question is at its end, after any few-shot examples
  panel.querySelectorAll('pre.prompt').forEach(p => { p.scrollTop = p.scrollHeight; });
}
document.querySelectorAll('td.num').forEach(td => {
  td.addEventListener('mouseenter', () => { if(!document.querySelector('td.sel')) show(td, false); });
  td.addEventListener('click', () => show(td, true));
});
document.body.setAttribute('data-report-ready', String(Object.keys(DETAILS).length));
"""


def _ci_text(stat: Stat | None) -> str:
    return f"[{fmt(stat.ci[0])}, {fmt(stat.ci[1])}]" if stat and stat.ci else ""


def _detail(row, column, cell, results: Results, stats, out_dir: Path) -> dict:
    stat = cell.stat
    summary = "missing: not run yet (never counted as zero)" if cell.missing else (
        f"{cell.text}  95% CI {_ci_text(stat) or 'n/a (no per-item scores)'}")
    if stat and stat.test:
        summary += (f"; vs SFT {fmt(stat.test.delta, signed=True)} "
                    f"[{fmt(stat.test.ci_low)}, {fmt(stat.test.ci_high)}], p={stat.test.p_value:.3f}"
                    + (" (within noise)" if stat.test.within_noise else ""))
    if vs_paper(cell):
        summary += f"; {vs_paper(cell)}"
    detail = {"title": f"{' '.join(row.lead).strip()}: {column.label}", "summary": summary,
              "benchmarks": [], "seeds": "", "runs": "", "examples": [], "config": ""}
    if not cell.group or cell.group not in stats:
        return detail
    group_stats = stats[cell.group]
    for bench in results.benchmarks:
        b = group_stats.get(f"bench:{bench}")
        detail["benchmarks"].append([label(bench), fmt(b.value) if b and b.value is not None else MISSING,
                                     _ci_text(b), fmt(b.test.delta, signed=True) if b and b.test else ""])
    cells = [c for c in results.cells if c.group == cell.group]
    detail["seeds"] = ", ".join(str(c.seed) for c in cells)
    frame = results.frame[results.frame.group == cell.group]
    detail["runs"] = " ".join(sorted({r for ids in frame.run_ids.dropna() for r in ids.split()}))
    detail["config"] = json.dumps(cells[0].config, indent=1, sort_keys=True, default=str)[:4000]
    # the clicked column's benchmark first: its examples are the ones asked about
    own = column.key[len("bench:"):] if column.key.startswith("bench:") else None
    for c in cells:
        for bench in sorted(results.benchmarks, key=lambda b: b != own):
            row_f = frame[(frame.cell == c.name) & (frame.benchmark == bench)]
            path = row_f.result_file.iloc[0] if len(row_f) and row_f.result_file.iloc[0] else None
            href = ""
            if path and results.source == "store":
                href = os.path.relpath(Path(path).with_name("outputs.jsonl"), out_dir)
            scores = results.item_scores.get((c.name, bench)) or {}
            for ex in results.examples.get((c.name, bench)) or []:
                score = scores.get(ex["item_id"])
                detail["examples"].append({
                    "name": f"{label(bench)}, item {ex['item_id']}" + (
                        f" (seed {c.seed})" if len(cells) > 1 else ""),
                    "href": href, "prompt": ex["prompt"], "output": ex["output"],
                    "output_label": "model output" + (f" ({ex['n_outputs']} samples)"
                                                      if ex["n_outputs"] > 1 else ""),
                    "score": "" if score is None else f"score {score:g}"})
    detail["examples"] = detail["examples"][:6]
    return detail


def _second_line(cell) -> str:
    """Under a number: its change over the SFT baseline and its 95% CI, so neither needs a
    click; under ``--vs-paper`` also the paper's number."""
    stat = cell.stat
    parts = []
    if stat is not None and not cell.missing:
        if stat.test is not None:
            parts.append(f"Δ {fmt(stat.test.delta, signed=True)}")
        if stat.ci:
            parts.append(f"CI {fmt(stat.ci[0])}–{fmt(stat.ci[1])}")
    if vs_paper(cell):
        parts.append(vs_paper(cell))
    return " · ".join(parts)


def html_report(title: str, tables: list[TableResult], figures: list[tuple[str, Path]],
                results: Results, stats, out_dir: Path) -> str:
    details: dict[str, dict] = {}
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p class='notes'>Blue: better than the SFT baseline; orange: worse (at the shown "
            f"precision). Bold: the best of its column. Under each number: Δ, its change over "
            f"the SFT baseline, and CI, its 95% bootstrap interval over items. {NOISE_MARK}: "
            "within noise (95% paired-bootstrap CI of the difference includes 0). Click a number "
            "for its details and example outputs.</p>"]
    for t_index, table in enumerate(tables):
        body.append(f"<h2 id='table-{html.escape(table.spec.name)}'>{html.escape(table.title)}</h2>")
        head = "".join(f"<th>{html.escape(x)}</th>" for x in
                       [*table.lead_labels, *(c.label for c in table.columns)])
        body.append(f"<table class='report' data-table='{html.escape(table.spec.name)}'><tr>{head}</tr>")
        for r_index, row in enumerate(table.rows):
            klass = "summary" if row.is_summary else ("baseline" if row.is_baseline else "")
            tds = [f"<td>{html.escape(x)}</td>" for x in row.lead]
            for c_index, (column, cell) in enumerate(zip(table.columns, row.cells)):
                cid = f"t{t_index}r{r_index}c{c_index}"
                details[cid] = _detail(row, column, cell, results, stats, out_dir)
                classes = ["num", cell.shade or "", "missing" if cell.missing else "",
                           "best" if cell.best else ""]
                text = MISSING if cell.missing else cell.text + (NOISE_MARK if cell.within_noise else "")
                sub = _second_line(cell)
                sub = f"<span class='sub'>{html.escape(sub)}</span>" if sub else ""
                tds.append(f"<td class='{' '.join(c for c in classes if c)}' data-id='{cid}'>"
                           f"<span class='v'>{html.escape(text)}</span>{sub}</td>")
            body.append(f"<tr class='{klass}'>{''.join(tds)}</tr>")
        body.append("</table>")
        if table.notes:
            body.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
                        + "</ul>")
    for name, png in figures:
        data = base64.b64encode(png.read_bytes()).decode()
        body.append(f"<h2 id='figure-{html.escape(name)}'>Figure {html.escape(name)}</h2>"
                    f"<img class='figure' alt='figure {html.escape(name)}' src='data:image/png;base64,{data}'>")
    payload = json.dumps(details, sort_keys=True, ensure_ascii=True).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n<div id='detail'></div>\n"
            f"<script>const DETAILS = {payload};\n{SCRIPT}</script>\n</body></html>\n")

# ruff: noqa: E501  (the inline CSS, script and page template read best unwrapped)
"""The HTML report: one self-contained page (inline CSS and script, no
network) with the matrix, filters, and each cell expandable to its verdicts,
step outcomes and decision trace."""

from __future__ import annotations

import json
from html import escape
from pathlib import PurePath
from typing import Any

from kvmsim.matrix import STATUSES, CellResult, MatrixResult, ScenarioEntry
from kvmsim.report.fields import format_value
from kvmsim.report.symbols import STATUS_STYLE, cell_text, legend_items

#: Characters of trace text kept per cell (the page must stay loadable).
TRACE_CHARS = 12_000

_CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:1em;color:#222}
h1{font-size:18px;margin:0 0 .3em}
#filters{display:flex;gap:1em;flex-wrap:wrap;align-items:center;margin:.5em 0;padding:.4em;
 background:#f3f3f3;border:1px solid #ddd}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:2px 4px;vertical-align:top}
th{background:#eee;font-weight:600;font-size:11px}
th.sc,td.sc{text-align:left;white-space:nowrap;position:sticky;left:0;background:#fafafa}
td.cell{text-align:center;min-width:3em}
td.pass{background:#dff5df} td.kfail{background:#fff3c4} td.fail{background:#ffc9c9}
td.xpass{background:#f3c9ff} td.error{background:#d33;color:#fff} td.na{background:#f7f7f7;color:#aaa}
details>summary{cursor:pointer;list-style:none;font-family:monospace}
details[open]{text-align:left}
.box{max-width:60em;max-height:30em;overflow:auto;background:#fff;color:#222;border:1px solid #999;
 padding:.4em;margin-top:.3em;text-align:left}
.box pre{font-size:11px;margin:.2em 0;white-space:pre}
.hidden{display:none}
#legend{margin-top:1em;font-size:12px} #legend code{background:#eee;padding:0 .2em}
"""

_JS = """
(function(){
 const q=(s)=>Array.from(document.querySelectorAll(s));
 const arch=document.getElementById('f-arch'), strat=document.getElementById('f-strategy'),
   text=document.getElementById('f-scenario'), shown=document.getElementById('shown');
 function apply(){
  const a=arch.value, s=strat.value, t=text.value.toLowerCase();
  const st=new Set(q('input.f-status:checked').map(e=>e.value));
  q('[data-arch]').forEach(e=>{
   const ok=(a===''||e.dataset.arch===a)&&(s===''||e.dataset.strategy===s);
   e.classList.toggle('hidden',!ok);});
  let n=0;
  q('tr.row').forEach(r=>{
   let ok=r.dataset.scenario.toLowerCase().includes(t);
   if(ok){ok=q('#'+r.id+' td.cell').some(c=>!c.classList.contains('hidden')&&st.has(c.dataset.status));}
   r.classList.toggle('hidden',!ok); if(ok)n++;});
  let all=q('tr.row').length;
  shown.textContent=n+' of '+all+(all==1?' scenario':' scenarios')+' shown';
 }
 [arch,strat,text].forEach(e=>e.addEventListener('input',apply));
 q('input.f-status').forEach(e=>e.addEventListener('change',apply));
 apply(); document.body.dataset.ready='1';
})();
"""


def _trace_text(events: list[dict[str, Any]] | None) -> str:
    if not events:
        return "(no trace)"
    lines = []
    for e in events:
        name = e.get("event")
        rest = " ".join(
            f"{k}={format_value(name, k, v)}"
            for k, v in e.items()
            if k not in ("event", "seq", "vcpu", "step")
        )
        step = e.get("step")
        where = "" if step is None else f"[{step}] "
        lines.append(f"{e.get('seq', ''):>4} {where}{e.get('event')} {rest}".rstrip())
    text = "\n".join(lines)
    if len(text) > TRACE_CHARS:
        text = text[:TRACE_CHARS] + "\n... (cut)"
    return text


def _cell(c: CellResult) -> str:
    parts = [f"<b>{escape(c.status)}</b> {escape(STATUS_STYLE[c.status][1])}"]
    if c.message:
        parts.append(f"<div>{escape(c.message)}</div>")
    if c.verdicts:
        parts.append("<div>verdicts: " + escape(", ".join(c.verdicts)) + "</div>")
    if c.failures:
        parts.append("<div>" + "<br>".join(escape(f) for f in c.failures) + "</div>")
    if c.outcomes:
        steps = ", ".join(f"{i}:{o}" for i, o in enumerate(c.outcomes))
        parts.append(f"<div>step outcomes: {escape(steps)}</div>")
    parts.append(f"<pre>{escape(_trace_text(c.trace))}</pre>")
    return (
        f"<details><summary>{escape(cell_text(c))}</summary>"
        f"<div class=box>{''.join(parts)}</div></details>"
    )


def html(result: MatrixResult) -> str:
    cols = result.plan.columns
    arches = sorted({c.arch for c in cols})
    strategies = sorted({c.strategy for c in cols})
    head = ["<th class=sc>scenario</th>"] + [
        f'<th data-arch="{escape(c.arch)}" data-strategy="{escape(c.strategy)}">'
        f"{escape(c.arch)}<br>{escape(c.strategy)}</th>"
        for c in cols
    ]
    rows = []
    for i, sc in enumerate(result.plan.scenarios):
        tds = [f'<td class=sc title="{escape(_source(sc))}">{escape(sc.name)}</td>']
        for c in cols:
            attrs = f'data-arch="{escape(c.arch)}" data-strategy="{escape(c.strategy)}"'
            cell = result.cell(sc.name, c)
            if cell is None:
                tds.append(f'<td class="na" {attrs} data-status="na">·</td>')
            else:
                tds.append(
                    f'<td class="cell {cell.status}" {attrs} data-status="{cell.status}">'
                    f"{_cell(cell)}</td>"
                )
        rows.append(
            f'<tr class=row id="r{i}" data-scenario="{escape(sc.name)}">{"".join(tds)}</tr>'
        )
    options = lambda xs: "".join(  # noqa: E731
        f'<option value="{escape(x)}">{escape(x)}</option>' for x in xs
    )
    statuses = "".join(
        f'<label><input type=checkbox class=f-status value="{s}" checked> {s} '
        f"({result.summary[s]})</label>"
        for s in STATUSES
    )
    legend = "; ".join(f"<code>{escape(s)}</code> {escape(m)}" for s, m in legend_items())
    data = json.dumps(result.summary)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>kvmsim matrix</title><style>{_CSS}</style></head>
<body data-summary='{escape(data)}'>
<h1>kvmsim matrix</h1>
<p id=summary>{escape(result.summary_line())}</p>
<div id=filters>
<label>arch <select id=f-arch><option value="">all</option>{options(arches)}</select></label>
<label>strategy <select id=f-strategy><option value="">all</option>{options(strategies)}</select></label>
<label>scenario <input id=f-scenario type=search placeholder="filter by name"></label>
{statuses}
<span id=shown></span>
</div>
<table id=matrix><thead><tr>{"".join(head)}</tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<div id=legend><b>Legend:</b> {legend}; <code>·</code> the scenario does not run on this arch.
Click a cell for its verdicts, step outcomes and decision trace.</div>
<script>{_JS}</script>
</body></html>
"""
    # where kvmsim is installed is nobody's business in a shared report:
    # name each scenario file by its library (also inside error messages)
    for sc in result.plan.scenarios:
        page = page.replace(escape(sc.path), escape(_source(sc)))
    return page


def _source(entry: ScenarioEntry) -> str:
    """A scenario file as ``library:file.toml``, without the install path."""
    return f"{entry.library}:{PurePath(entry.path).name}"

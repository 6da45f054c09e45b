"""The "projected on <device>" report section (HTML, autoescaped) and the same as plain text.

Both render a projection document (``orthrus.profile.project.projection_document``, the content
of a run's projection.json), so a report re-renders from files without re-projecting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from orthrus.profile.project import (
    NOT_COMPARABLE,
    PROJECTION_FILE,
    PROJECTION_FORMAT,
    honesty_count,
    honesty_rows,
    row_comparable,
)

SECTION_TEMPLATE = """\
{% for d in devices %}
<section class="projection" id="projected-{{ loop.index }}">
<h2>Projected on {{ d.device }} ({{ d.dtype }})</h2>
<p>{{ formula }}. The run's acceptance by position combined with the latency profile
<code>{{ d.profile }}</code> (model shape {{ d.profile_shape }}{% if d.draft_profile %}; draft model:
<code>{{ d.draft_profile }}</code>{% endif %}). Times are the profile's medians at the context shown,
interpolated between measured points, never extrapolated. t_step and t_cycle are the engines' own
loop steps; the bare passes leave out the host work between them, so "speedup (passes)" is what
an engine without that work would reach.</p>
{% for w in d.warnings %}<p class="warning">&#9888; {{ w }}</p>{% endfor %}
<table class="projection-table">
<thead><tr><th>acceptance of</th><th>engine</th><th>context</th><th>K</th><th>tokens/cycle</th>
<th>t_step ms</th><th>t_cycle(K) ms</th>
<th>t_AR(1) ms</th><th>t_draft(K) ms</th><th>t_verify(K) ms</th><th>tok/s</th><th>AR tok/s</th>
<th>speedup</th><th>speedup (passes)</th>{% if d.same_machine %}<th>measured (decode)</th>{% endif %}<th>arithmetic / note</th></tr></thead>
<tbody>
{% for r in d.rows %}<tr{% if r.best %} class="best"{% endif %}>
<td>{{ r.source }}</td><td>{{ r.engine }}</td><td>{{ "%.0f"|format(r.context) }}</td>
<td>{{ r.block }}{% if r.best %} &#9733;{% endif %}</td>
<td>{{ num(r.tokens_per_cycle, 2) }}</td><td>{{ num(r.t_step_ms, 3) }}</td><td>{{ num(r.t_cycle_ms, 3) }}</td>
<td>{{ num(r.t_ar1_ms, 3) }}</td><td>{{ num(r.t_draft_ms, 3) }}</td>
<td>{{ num(r.t_verify_ms, 3) }}</td><td>{{ num(r.tokens_per_s, 1) }}</td><td>{{ num(r.ar_tokens_per_s, 1) }}</td>
<td>{{ num(r.speedup, 2) }}{% if r.speedup is not none %}x{% endif %}</td><td>{{ num(r.speedup_passes, 2) }}</td>
{% if d.same_machine %}<td>{{ num(r.measured_speedup_decode, 2) }}{% if not r.comparable %}<br><small>not comparable</small>{% endif %}</td>{% endif %}
<td>{{ r.arithmetic }}{% if r.note %}<br><small>{{ r.note }}</small>{% endif %}</td></tr>
{% endfor %}
</tbody></table>
<p>&#9733; best block size on this device for that acceptance.{% for engine, why in not_comparable %}
{% if d.rows | selectattr("engine", "equalto", engine) | list %} <code>{{ engine }}</code> rows are {{ why }}.{% endif %}{% endfor %}</p>
</section>
{% endfor %}
"""


ROW_DEFAULTS = {"t_step_ms": None, "t_cycle_ms": None, "speedup_passes": None, "basis": None}


def _num(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render_projection_section(document: dict[str, Any]) -> str:
    """The section's HTML fragment: every text value escaped (Jinja2 autoescape), no network."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(SECTION_TEMPLATE)
    devices = [  # a projection.json written before engine steps has rows without their columns
        {**d, "rows": [{**ROW_DEFAULTS, **r, "comparable": row_comparable(r)} for r in d.get("rows", [])]}
        for d in document.get("devices", [])
    ]
    not_comparable = sorted({**NOT_COMPARABLE, **(document.get("not_comparable") or {})}.items())
    return template.render(
        devices=devices, formula=document.get("formula", ""), num=_num, not_comparable=not_comparable
    )


def projection_section(run_dir: str | Path) -> tuple[str, dict[str, Any]] | None:
    """(HTML fragment, projection document) from a run's projection.json; None when it has none.

    The hook for report.html: ``section = projection_section(run_dir)``; if not None, insert
    ``section[0]`` as markup.
    """
    path = Path(run_dir) / PROJECTION_FILE
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict) or document.get("format") != PROJECTION_FORMAT:
        return None
    return render_projection_section(document), document


def format_projection_text(document: dict[str, Any]) -> str:
    """The projection as plain-text tables with the arithmetic of each row."""
    lines = [document.get("formula", "")]
    for d in document.get("devices", []):
        lines += ["", f"== projected on {d['device']} ({d['dtype']}), profile {d['profile']} ({d['profile_shape']})"]
        if d.get("draft_profile"):
            lines.append(f"   draft model profile {d['draft_profile']}")
        lines += [f"   WARNING: {w}" for w in d["warnings"]]
        head = (
            f"   {'acceptance of':<36} {'ctx':>6} {'K':>3} {'tau':>6} {'tok/s':>9} {'AR tok/s':>9} {'speedup':>8}"
            f" {'passes':>7}"
        )
        if d.get("same_machine"):
            head += f" {'measured':>8}"
        lines.append(head + "  arithmetic: tau x t_step / t_cycle (passes: tau x t_AR(1) / (t_draft + t_verify))")
        for r in d["rows"]:
            line = (
                f"   {r['source'][:36]:<36} {r['context']:>6.0f} {r['block']:>3} {_num(r['tokens_per_cycle'], 2):>6} "
                f"{_num(r['tokens_per_s'], 1):>9} {_num(r['ar_tokens_per_s'], 1):>9} "
                f"{_num(r['speedup'], 2):>7}{'*' if r['best'] else ' '} {_num(r.get('speedup_passes'), 2):>7}"
            )
            if d.get("same_machine"):
                line += f" {_num(r['measured_speedup_decode'], 2):>8}"
            line += f"  {r['arithmetic']}"
            if r.get("note"):
                line += f"  [{r['note']}]"
            lines.append(line)
        lines.append("   * best block size on this device")
    honesty = honesty_rows(document)
    if honesty:
        lines += ["", "== honesty check: projection vs the decode speedup measured on the profile's own machine"]
        lines.append(
            f"   {'acceptance of':<36} {'K':>3} {'projected':>9} {'measured':>9} {'error':>8}"
            f"   {'from passes':>11} {'error':>8}   measured per round"
        )
        for h in honesty:
            passes, passes_error = h.get("projected_passes"), h.get("error_passes_pct")
            lines.append(
                f"   {h['source'][:36]:<36} {h['block']:>3} {h['projected']:>9.2f} {h['measured_decode']:>9.2f} "
                f"{h['error_pct']:>+7.1f}%   {_num(passes, 2):>11} "
                + (f"{passes_error:>+7.1f}%" if passes_error is not None else f"{'–':>8}")
                + "   "
                + " ".join(f"{x:.2f}" for x in h.get("measured_by_round") or [])
                + ("" if h["comparable"] else "   (not comparable)")
            )
        lines.append(honesty_count_text(document))
    return "\n".join(lines)


def honesty_count_text(document: dict[str, Any]) -> str:
    """The honesty check's count in one line: comparable rows within the tolerance, and the rows
    that are not comparable (with why) apart."""
    count = honesty_count(document)
    text = (
        f"   {count['within']} of {count['comparable']} comparable rows within {count['tolerance_pct']:g}% "
        f"({count['within_from_passes']} from the bare passes)"
    )
    if count["not_comparable"]:
        reasons = {**NOT_COMPARABLE, **(document.get("not_comparable") or {})}
        why = "; ".join(f"{e}: {reasons.get(e, 'not comparable')}" for e in count["not_comparable_engines"])
        text += f"; {count['not_comparable']} not comparable, left out of the count ({why})"
    return text

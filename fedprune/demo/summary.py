"""The demo's result as data (``summary.json``), as a terminal table, and as one self-contained web page.

``summary.html`` has no external asset (no script, font, stylesheet or image link): the chart is inline SVG
and the privacy report is the one ``fedprune audit show --format html`` renders, embedded after it verified.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedprune.demo.service import RECIPE_METHODS

SUMMARY_VERSION = 1

# The demo's recipes (RECIPE_METHODS: the method each runs) and what the coordinator's model is made of.
METHOD_NAMES = {"wanda": "Wanda", "sparsegpt": "SparseGPT", "magnitude": "magnitude"}
RECIPE_NAMES = {"fedprllm": "FedPrLLM", "fedspallm": "FedSpaLLM"}
RECIPE_SUMMARIES = {
    "fedprllm": "Wanda keep-votes only",
    "fedspallm": "SparseGPT masks plus l0-norm averaged kept weights",
}
FEDERATED_MODELS = {
    "fedprllm": "randomized, secret-shared Wanda keep-votes of every site",
    "fedspallm": "randomized, secret-shared SparseGPT keep-votes of every site; the kept weights "
    "l0-norm averaged over the sites that kept them",
}

# Rows of the table, in order: (key in summary["perplexity"], label, what it is); ``{method}`` and
# ``{federated}`` in a note stand for the run's method and recipe (see :func:`row_notes`).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("dense", "dense", "the base model, nothing pruned"),
    ("magnitude", "magnitude", "smallest weights pruned; uses no data"),
    ("centralized", "centralized", "{method} on every site's documents pooled at one place (no privacy)"),
    ("local_only_mean", "local-only (mean)", "each site prunes with {method} on its own documents alone"),
    ("local_only_worst", "local-only (worst)", "the worst of those sites"),
    (
        "federated_no_privacy",
        "federated, no privacy",
        "the same federation without randomized response or record-level DP (secure aggregation still on)",
    ),
    ("private_federated", "private federated", "the coordinator's model: {federated}"),
)


def recipe_of(summary: dict[str, Any]) -> tuple[str, str]:
    """Return the run's (recipe, method); a summary that names neither is FedPrLLM with Wanda."""
    settings = summary.get("settings", {})
    recipe = settings.get("recipe", "fedprllm")
    return recipe, settings.get("method", RECIPE_METHODS.get(recipe, "wanda"))


def recipe_in_words(summary: dict[str, Any]) -> str:
    """Return one line naming the recipe, its method and the baselines' method."""
    recipe, method = recipe_of(summary)
    name = METHOD_NAMES.get(method, method)
    what = RECIPE_SUMMARIES.get(recipe, f"{name} keep-votes")
    return (
        f"recipe: {recipe} ({RECIPE_NAMES.get(recipe, recipe)}: {what}); centralized and local-only prune "
        f"with {name} too"
    )


def row_notes(summary: dict[str, Any]) -> dict[str, str]:
    """Return what each row of the table is, naming the run's method and recipe."""
    recipe, method = recipe_of(summary)
    values = {
        "method": METHOD_NAMES.get(method, method),
        "federated": FEDERATED_MODELS.get(
            recipe, f"randomized, secret-shared {method} keep-votes of every site"
        ),
    }
    return {key: note.format(**values) for key, _, note in ROWS}


def guarantee_in_words(guarantee: dict[str, Any], *, weight_updates: bool = False) -> str:
    """Return one sentence stating a report guarantee with its number, delta and unit.

    ``weight_updates``: the sites also sent their kept weights' updates (FedSpaLLM) in the same sums.
    """
    layer = guarantee["layer"]
    epsilon = guarantee.get("epsilon")
    delta = guarantee.get("delta")
    details = guarantee.get("details", {})
    unit = guarantee.get("unit", "")
    who = "every site" if guarantee.get("participant") == "*" else f"site {guarantee.get('participant')}"
    if layer == "calibration_statistics":
        return (
            f"Record-level differential privacy for {who}: epsilon {epsilon:.2f} at delta {delta:g}, the unit "
            f"being {unit}, over {details.get('releases', '?')} releases; it covers the calibration statistics "
            "and what is computed from them (the statistics are noised before any mask is chosen), not what "
            "the report's threat model and exclusions list outside it."
        )
    if layer == "mask_bits":
        epsilon0 = details.get("epsilon0_per_coordinate")
        coordinates = details.get("coordinates")
        flip = 1.0 / (1.0 + math.exp(float(epsilon0))) if epsilon0 is not None else float("nan")
        composed = "unbounded" if epsilon is None else f"{epsilon:,.0f}"
        return (
            f"Randomized response for {who}: each keep-vote bit is flipped with probability {flip:.3f}, "
            f"epsilon0 {epsilon0:g} per coordinate (the unit: one weight's bit of the site's mask); "
            f"composed over all {coordinates:,} bits of its mask the figure is {composed} at delta "
            f"{delta:g}, i.e. the whole mask is not hidden: the guarantee is per weight."
        )
    if layer == "aggregation":
        if weight_updates:
            return (
                "Secure aggregation: the coordinator sees per-weight sums of the sites' randomized votes and of "
                "their kept weights' updates, never one site's vector as sent; but where a single site votes "
                "keep for a weight, the update sum is that site's own update and shows its raw keep bit, so no "
                f"amplified epsilon is claimed ({details.get('reason')})."
            )
        if details.get("valid"):
            return (
                "Secure aggregation: of the sites' votes the coordinator sees only per-weight sums; amplified "
                f"bound epsilon {epsilon:.3g} at delta {delta:g} per {unit}."
            )
        return (
            "Secure aggregation: of the sites' votes the coordinator sees only the per-weight sums of the "
            f"randomized votes, never one site's vector; no amplified epsilon is claimed ({details.get('reason')})."
        )
    return f"{layer} for {who}: epsilon {epsilon} at delta {delta} per {unit}"


def guarantees_in_words(report: dict[str, Any], *, weight_updates: bool = False) -> list[str]:
    """Return the report's guarantees in words: one per layer, or one per site where the sites differ.

    Then the threat model, and each of the report's exclusions (what its figures do not cover).
    ``weight_updates``: the run summed the kept weights' updates too (FedSpaLLM).
    """
    sentences: list[str] = []
    seen: set[tuple[str, str]] = set()
    for guarantee in report.get("guarantees", []):
        sentence = guarantee_in_words(guarantee, weight_updates=weight_updates)
        # Sites with the same parameters get the same figure: say it once, for every site.
        generic = re.sub(r"for site \S+:", "for each site:", sentence)
        key = (guarantee["layer"], generic)
        if key in seen:
            continue
        seen.add(key)
        sentences.append(generic)
    threat = report.get("threat_model", {})
    if threat:
        colluders = threat.get("max_colluding_participants")
        sites = "site" if colluders == 1 else "sites"
        sentences.append(
            f"Threat model: {threat.get('participants')} sites, secure-aggregation threshold "
            f"{threat.get('secure_aggregation_threshold')}, at most {colluders} {sites} colluding with the "
            f"coordinator; transport: {threat.get('transport')}."
        )
        if threat.get("data_dependent_aborts"):
            sentences.append(f"Outside every guarantee: {threat['data_dependent_aborts']}")
    sentences += [f"Exclusion stated in the signed report: {text}" for text in report.get("exclusions", [])]
    return sentences


def format_table(summary: dict[str, Any]) -> str:
    """Return the terminal table: every model's perplexity and its change against dense."""
    perplexity = summary["perplexity"]
    dense = perplexity["dense"]
    width = max(len(label) for _, label, _ in ROWS)
    lines = [f"{'model':<{width}}  {'perplexity':>10}  {'vs dense':>8}"]
    for key, label, _ in ROWS:
        value = perplexity[key]
        change = "" if key == "dense" else f"{100 * (value / dense - 1):+7.1f}%"
        lines.append(f"{label:<{width}}  {value:10.2f}  {change:>8}".rstrip())
    sparsity = summary["sparsity"]
    lines.append(
        f"sparsity: target {sparsity['target']:.0%} of the decoder blocks' linear weights, reached "
        f"{sparsity['reached']:.4f}"
    )
    lines.append(recipe_in_words(summary))
    return "\n".join(lines)


def write_summary_json(summary: dict[str, Any], path: Path) -> Path:
    """Write ``summary`` as indented JSON (keys in a stable order) and return the path."""
    missing = [key for key, _, _ in ROWS if key not in summary.get("perplexity", {})]
    if missing:
        raise ValueError(f"summary.perplexity: missing {', '.join(missing)}")
    document = {"summary_version": SUMMARY_VERSION, **summary}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------- html
_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:72em;margin:1.5em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #dde;
padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #c8ccd6;padding:.25em .6em;
vertical-align:top;text-align:left}th{background:#f1f3f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.highlight td{background:#eaf6ee;font-weight:600}.lead{color:#4a5060}.ok{color:#17733a;font-weight:600}
.bar{display:inline-block;height:.8em;background:#5b7bd5;vertical-align:middle}
.report{border:1px solid #c8ccd6;padding:0 1em 1em;margin-top:.5em;background:#fbfbfd}
code{font-size:.95em}
"""

_COLOURS = {
    "dense": "#8a93a6",
    "magnitude": "#d9822b",
    "centralized": "#5b7bd5",
    "local_only_mean": "#c65b7c",
    "local_only_worst": "#9e3553",
    "federated_no_privacy": "#8cc9a5",
    "private_federated": "#1f9d55",
}


def perplexity_chart(summary: dict[str, Any]) -> str:
    """Return an inline SVG horizontal bar chart of every model's perplexity (lower is better)."""
    perplexity = summary["perplexity"]
    values = [perplexity[key] for key, _, _ in ROWS]
    top = max(values) * 1.08
    label_width, chart_width, bar_height, gap = 150, 520, 26, 10
    height = len(ROWS) * (bar_height + gap) + 40
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_width + chart_width + 80}' height='{height}' "
        "role='img' aria-label='perplexity of each model, lower is better' "
        "font-family='system-ui,sans-serif' font-size='13'>",
    ]
    for index, (key, label, _) in enumerate(ROWS):
        y = 10 + index * (bar_height + gap)
        width = chart_width * perplexity[key] / top
        parts.append(
            f"<text x='{label_width - 8}' y='{y + bar_height * 0.68:.1f}' text-anchor='end'>{html.escape(label)}</text>"
        )
        parts.append(
            f"<rect x='{label_width}' y='{y}' width='{width:.1f}' height='{bar_height}' rx='3' "
            f"fill='{_COLOURS[key]}'><title>{html.escape(label)}: {perplexity[key]:.2f}</title></rect>"
        )
        parts.append(
            f"<text x='{label_width + width + 6:.1f}' y='{y + bar_height * 0.68:.1f}'>{perplexity[key]:.2f}</text>"
        )
    dense_x = label_width + chart_width * perplexity["dense"] / top
    axis_y = 10 + len(ROWS) * (bar_height + gap)
    parts.append(
        f"<line x1='{dense_x:.1f}' y1='4' x2='{dense_x:.1f}' y2='{axis_y}' stroke='#1d2330' "
        "stroke-dasharray='4 3'/>"
    )
    parts.append(
        f"<text x='{label_width}' y='{axis_y + 20}' fill='#4a5060'>perplexity on held-out text (lower is "
        "better); dashed line: dense model</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _report_body(report_html: str) -> str:
    # The rendered report is a whole page; its body goes inline so the summary stays one document.
    match = re.search(r"<body>(.*)</body>", report_html, flags=re.DOTALL)
    return match.group(1) if match else f"<pre>{html.escape(report_html)}</pre>"


def _sparsity_rows(layers: dict[str, Any]) -> list[str]:
    rows = []
    for name, entry in layers.items():
        sparsity = float(entry["sparsity"])
        rows.append(
            f"<tr><td><code>{html.escape(name)}</code></td><td class='num'>{entry.get('shape', '')}</td>"
            f"<td class='num'>{sparsity:.4f}</td><td><span class='bar' style='width:{160 * sparsity:.0f}px'>"
            "</span></td></tr>"
        )
    return rows


def render_summary_html(summary: dict[str, Any], *, layers: dict[str, Any], report_html: str) -> str:
    """Return ``summary.html``: the table, the chart, the guarantees, per-layer sparsity and the report."""
    settings = summary["settings"]
    perplexity = summary["perplexity"]
    dense = perplexity["dense"]
    notes = row_notes(summary)
    recipe, method = recipe_of(summary)
    method_name = METHOD_NAMES.get(method, method)
    if recipe == "fedspallm":
        left = (
            f"pruned the demo model to {settings['sparsity']:.0%} unstructured sparsity with {method_name} "
            "(the FedSpaLLM recipe: the kept weights are averaged over the sites that kept them). No document "
            "left a site: randomized keep-votes and the kept weights' updates left them, secret-shared "
            "(record-level DP on the statistics both are computed from, randomized response on the votes, "
            "secure aggregation; a weight one site alone keeps shows that site's update), and each site's "
            "signed privacy statement"
        )
    else:
        left = (
            f"pruned the demo model to {settings['sparsity']:.0%} unstructured sparsity with {method_name} "
            f"(the {RECIPE_NAMES.get(recipe, recipe)} recipe). No document left a site: randomized, "
            "secret-shared keep-votes did (record-level DP on the statistics, randomized response, secure "
            "aggregation), and each site's signed privacy statement"
        )
    table = [
        "<table><tr><th>model</th><th>perplexity</th><th>vs dense</th><th>what it is</th></tr>",
        *(
            f"<tr{' class=highlight' if key == 'private_federated' else ''}><td>{html.escape(label)}</td>"
            f"<td class='num'>{perplexity[key]:.2f}</td>"
            f"<td class='num'>{'' if key == 'dense' else f'{100 * (perplexity[key] / dense - 1):+.1f}%'}</td>"
            f"<td>{html.escape(notes[key])}</td></tr>"
            for key, label, _ in ROWS
        ),
        "</table>",
    ]
    local = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{value:.2f}</td></tr>"
        for name, value in summary.get("local_only", {}).items()
    )
    guarantees = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in summary["guarantees"])
    phases = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{seconds:.1f} s</td></tr>"
        for name, seconds in summary.get("phases", {}).items()
    )
    report = summary["report"]
    sparsity = summary["sparsity"]
    evaluation = summary.get("evaluation", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        "<title>fedprune demo: private federated pruning</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>fedprune demo: private federated pruning</h1>",
        "<p class='lead'>"
        f"{settings['sites']} sites, each holding {settings['documents_per_site']} documents of its own topics, "
        f"{html.escape(left)}; the coordinator signed the privacy report below.</p>",
        f"<p class='ok'>Privacy report verified against the signing key's fingerprint "
        f"<code>{html.escape(report['signer_fingerprint'])}</code>.</p>",
        "<h2>Perplexity</h2>",
        perplexity_chart(summary),
        *table,
        f"<p>Evaluated on {evaluation.get('windows', '?')} held-out windows of {evaluation.get('seqlen', '?')} "
        f"tokens (of {evaluation.get('total_windows', '?')}). Sparsity reached: {sparsity['reached']:.4f} "
        f"of the decoder blocks' linear weights (target {sparsity['target']:.2f}).</p>",
        "<h2>Local-only, site by site</h2><table><tr><th>site</th><th>perplexity</th></tr>",
        local,
        "</table>",
        "<h2>Privacy guarantees in words</h2><ul>",
        guarantees,
        "</ul>",
        "<h2>Sparsity per layer</h2><table><tr><th>layer</th><th>shape</th><th>sparsity</th><th></th></tr>",
        *_sparsity_rows(layers),
        "</table>",
        "<h2>Time of each phase</h2><table>",
        phases,
        "</table>",
        "<h2>The signed privacy report</h2><div class='report'>",
        _report_body(report_html),
        "</div></body></html>",
    ]
    return "\n".join(parts) + "\n"


def external_references(page: str) -> Sequence[str]:
    """Return the URLs a page would fetch (src/href/url() pointing outside it); empty when self-contained."""
    found = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"#][^'"]*)['"]""", page)
    found += re.findall(r"url\(\s*['\"]?([^'\")]+)", page)
    # The SVG namespace is an identifier, not something a browser fetches.
    return [url for url in found if url != "http://www.w3.org/2000/svg"]

"""The before/after report a reviewer reads: Markdown and a self-contained HTML page (images inline).

Only aggregates, ids, URIs and digests appear here: no record text, no generations. That is what lets
the report go to MLflow beside the S3 copy.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amnesia.results.evaluation import Evaluation
from amnesia.results.figures import recoveries, table_rows
from amnesia.results.gate import Check, Verdict
from amnesia.results.plan import RunPlan
from amnesia.results.search import SearchResult
from amnesia.science.metrics.registry import ARROW, direction
from amnesia.storage.layout import REPORT_HTML, REPORT_MD


@dataclass
class ReportInputs:
    run_id: str
    base: Evaluation
    candidate: Evaluation
    verdict: Verdict
    images: dict[str, Path]  # caption -> PNG (trade-off plot, trace heatmaps, training curves)
    facts: list[tuple[str, str]] = field(default_factory=list)  # (label, value): models, method, layers…
    plan: RunPlan | None = None  # the run's standing obligations
    search: SearchResult | None = None  # the settings search that chose the unlearning's settings


OBLIGATION_HEAD = ["earlier request", "fulfilled by", "items", "knowledge", "regurgitation", "forget score", "result"]


def obligation_rows(inp: ReportInputs) -> tuple[list[tuple[str, ...]], list[bool]]:
    """One row per earlier request checked (ids and figures only), and whether each passed its floor."""
    if inp.plan is None:
        return [], []
    checks = {c.name: c for c in inp.verdict.checks}
    out, ok = [], []
    for ref in inp.plan.obligations:
        got = inp.candidate.obligations.get(ref.request_id)
        check = checks.get(f"obligation.{ref.request_id}.forget_score")
        passed = check.passed if check else True
        result = ("pass" if passed else "FAIL") if check else "not gated"
        out.append((ref.request_id, f"v{ref.fulfilled_by}", str(got.items if got else 0),
                    _fmt(got.knowledge if got else None), _fmt(got.regurgitation if got else None),
                    _fmt(got.forget_score if got else None), result))  # fmt: skip
        ok.append(passed)
    return out, ok


def _obligation_note(plan: RunPlan) -> str:
    note = f"{len(plan.obligations)} of {len(plan.earlier)} standing obligations checked ({plan.sampling})."
    if plan.not_checked:
        note += f" Not checked this run: {', '.join(plan.not_checked)}."
    if plan.ended:
        note += f" Ended (key destroyed, checks stopped): {', '.join(plan.ended)}."
    return note + " Scored from sealed prompts and keyed fingerprints of the answers; no membership test."


def rows(base: Evaluation, candidate: Evaluation) -> list[tuple[str, float | None, float | None]]:
    """(metric, base, candidate): every per-task metric, then the scores and the registered metrics."""
    return table_rows(base, candidate)


def _better(name: str) -> str:
    d = direction(name)
    return ARROW[d] if d else ""


def attack_rows(base: Evaluation, candidate: Evaluation) -> list[tuple[str, ...]]:
    """(attack, metric, base, base attacked, candidate, candidate attacked, recovery) for every attack and
    forget metric both evaluations measured: the recovery with its parts."""
    rec = recoveries(base, candidate)
    out = []
    for variant, metrics in candidate.attacks.items():
        if variant == "none":
            continue
        for m, attacked in metrics.items():
            base_attacked = base.attacks.get(variant, {}).get(m)
            parts = (
                base.plain.get(m),
                base_attacked,
                candidate.plain.get(m),
                attacked,
                rec.get(f"recovery.{variant}.{m}"),
            )
            out.append((variant, m, *map(_fmt, parts)))
    return out


ATTACK_HEAD = ["attack", "forget metric", "base", "base attacked", "candidate", "candidate attacked", "recovery"]


def _bound(check: Check) -> str:
    return f"{'≤' if check.ceiling else '≥'} {check.floor:.3f}"


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _delta(b: float | None, c: float | None) -> str:
    return "" if b is None or c is None else f"{c - b:+.3f}"


def markdown(inp: ReportInputs, image_names: dict[str, str]) -> str:
    v = inp.verdict
    out = [f"# Unlearning report — run `{inp.run_id}`", "", f"**Gate: {'PASS' if v.passed else 'FAIL'}**", ""]
    out += [f"- {r}" for r in v.reasons] + [""]
    out += ["| | |", "|---|---|"] + [f"| {k} | `{val}` |" for k, val in inp.facts] + [""]
    out += ["## Metrics", "", "| metric | better | base | candidate | change |", "|---|---|---:|---:|---:|"]
    out += [
        f"| {n} | {_better(n)} | {_fmt(b)} | {_fmt(c)} | {_delta(b, c)} |" for n, b, c in rows(inp.base, inp.candidate)
    ]
    out += ["", "## Gate checks", "", "| check | value | floor | result |", "|---|---:|---:|---|"]
    out += [f"| {c.name} | {_fmt(c.value)} | {_bound(c)} | {'pass' if c.passed else 'FAIL'} |" for c in v.checks]
    obligations, _ok = obligation_rows(inp)
    if inp.plan is not None and (obligations or inp.plan.ended):
        out += ["", "## Earlier requests (standing obligations)", "", _obligation_note(inp.plan), ""]
        out += ["| " + " | ".join(OBLIGATION_HEAD) + " |", "|---|---|" + "---:|" * 4 + "---|"]
        out += ["| " + " | ".join(r) + " |" for r in obligations]
    if inp.search is not None:
        head, body = inp.search.table()
        out += ["", "## Settings search", "", inp.search.line() + ".", "", inp.search.note(), ""]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]
    attacks = attack_rows(inp.base, inp.candidate)
    if attacks:
        out += ["", "## Attacks on forgetting", "", "| " + " | ".join(ATTACK_HEAD) + " |", "|---|---|" + "---:|" * 5]
        out += ["| " + " | ".join(r) + " |" for r in attacks]
    if inp.candidate.mmlu_subjects:
        out += ["", f"## Utility by subject ({inp.candidate.mmlu_sampling})", "", "| subject | base | candidate |",
                "|---|---:|---:|"]  # fmt: skip
        for s, acc in inp.candidate.mmlu_subjects.items():
            out.append(f"| {s} | {_fmt(inp.base.mmlu_subjects.get(s))} | {_fmt(acc)} |")
    for caption, name in image_names.items():
        out += ["", f"### {caption}", "", f"![{caption}]({name})"]
    return "\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d2330}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem} table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #d5d9e0;padding:.25rem .6rem;font-size:.85rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.verdict{display:inline-block;padding:.4rem 1rem;border-radius:.3rem;font-weight:700;color:#fff}
.pass{background:#1f8a4c} .fail{background:#c0392b} tr.failed td{background:#fdecea} tr.chosen td{background:#e8f6ee}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top} figcaption{font-size:.8rem;color:#555}
img{max-width:100%;border:1px solid #eee} code{font-size:.8rem}
"""


def _table(
    head: Sequence[str], body: Sequence[Sequence[str]], numeric: Sequence[bool], classes: Sequence[str] = ()
) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head) if any(head) else ""
    trs = []
    for i, row in enumerate(body):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        tds = "".join(f"<td{' class=n' if numeric[j] else ''}>{html.escape(x)}</td>" for j, x in enumerate(row))
        trs.append(f"<tr{cls}>{tds}</tr>")
    thead = f"<thead><tr>{th}</tr></thead>" if th else ""
    return f"<table>{thead}<tbody>{''.join(trs)}</tbody></table>"


def render_html(inp: ReportInputs) -> str:
    v = inp.verdict
    word = "PASS" if v.passed else "FAIL"
    parts = [f"<h1>Unlearning report — run <code>{html.escape(inp.run_id)}</code></h1>",
             f'<p><span class="verdict {word.lower()}">Gate: {word}</span></p>',
             "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in v.reasons) + "</ul>",
             _table(["", ""], [(k, val) for k, val in inp.facts], [False, False]),
             "<h2>Metrics, before and after</h2>",
             _table(["metric", "better", "base", "candidate", "change"],
                    [(n, _better(n), _fmt(b), _fmt(c), _delta(b, c)) for n, b, c in rows(inp.base, inp.candidate)],
                    [False, False, True, True, True]),
             "<h2>Gate checks</h2>",
             _table(["check", "value", "bound", "result"],
                    [(c.name, _fmt(c.value), _bound(c), "pass" if c.passed else "FAIL") for c in v.checks],
                    [False, True, True, False], ["" if c.passed else "failed" for c in v.checks])]  # fmt: skip
    obligations, ok = obligation_rows(inp)
    if inp.plan is not None and (obligations or inp.plan.ended):
        parts.append("<h2>Earlier requests (standing obligations)</h2>")
        parts.append(f"<p>{html.escape(_obligation_note(inp.plan))}</p>")
        parts.append(_table(OBLIGATION_HEAD, obligations, [False, False] + [True] * 4 + [False],
                            ["" if passed else "failed" for passed in ok]))  # fmt: skip
    if inp.search is not None:
        head, body = inp.search.table()
        parts.append("<h2>Settings search</h2>")
        parts.append(f"<p>{html.escape(inp.search.line())}. {html.escape(inp.search.note())}</p>")
        numeric = [h in ("steps", "s", "margin", "with attacks") for h in head]
        parts.append(_table(head, body, numeric, ["" if not r[0].endswith("(chosen)") else "chosen" for r in body]))
    attacks = attack_rows(inp.base, inp.candidate)
    if attacks:
        parts.append("<h2>Attacks on forgetting</h2>")
        parts.append("<p>Recovery = (candidate attacked − candidate) / (base − candidate), clipped to [0, 1]: the "
                     "share of what unlearning removed that the attack brings back. The base model attacked the same "
                     "way is the ceiling.</p>")  # fmt: skip
        parts.append(_table(ATTACK_HEAD, attacks, [False, False] + [True] * 5))
    if inp.candidate.mmlu_subjects:
        parts.append(f"<h2>Utility by subject ({html.escape(inp.candidate.mmlu_sampling)})</h2>")
        subjects = inp.candidate.mmlu_subjects.items()
        body = [(s, _fmt(inp.base.mmlu_subjects.get(s)), _fmt(a)) for s, a in subjects]
        parts.append(_table(["subject", "base", "candidate"], body, [False, True, True]))
    parts.append("<h2>Pictures</h2>")
    for caption, path in inp.images.items():
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
    head = f"<meta charset=utf-8><title>Unlearning report {html.escape(inp.run_id)}</title><style>{_CSS}</style>"
    return f'<!doctype html><html lang="en"><head>{head}</head><body>{chr(10).join(parts)}</body></html>\n'


def write(inp: ReportInputs, folder: Path) -> tuple[Path, Path]:
    """report.html (self-contained) and report.md with its images beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, (caption, path) in enumerate(inp.images.items()):
        name = f"figure{i}_{path.name}"
        (folder / name).write_bytes(path.read_bytes())
        names[caption] = name
    (folder / REPORT_MD).write_text(markdown(inp, names))
    (folder / REPORT_HTML).write_text(render_html(inp))
    return folder / REPORT_HTML, folder / REPORT_MD

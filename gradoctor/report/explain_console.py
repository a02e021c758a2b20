"""Terminal rendering of an :class:`~gradoctor.attribution.recipe_explain.ExplainResult`."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from gradoctor.attribution.recipe_explain import ExplainResult


def _tokens(scores: list[dict]) -> Text:
    """Per-token scores as coloured text: red pushes the target up, blue down."""
    top = max((abs(s["score"]) for s in scores), default=0.0) or 1.0
    text = Text()
    for s in scores:
        level = min(1.0, abs(s["score"]) / top)
        shade = int(255 - 175 * level)
        color = f"rgb(255,{shade},{shade})" if s["score"] > 0 else f"rgb({shade},{shade},255)"
        text.append(f" t{s['token']} ", style=f"black on {color}")
    return text


def render_explain(r: ExplainResult, console: Console) -> None:
    """Per example and method: target, steps and completeness; sanity and faithfulness per
    method; the notes (warnings first)."""
    methods = list(r.explanations)
    console.print(
        f"[bold]explain[/] {escape(r.recipe)} on {r.device}: {len(r.examples)} example(s), "
        f"{', '.join(methods)}, {r.precision}, model: {r.model_source} "
        f"[dim]({r.seconds:.1f} s) → {escape(r.out)}[/]",
        highlight=False,
    )
    table = Table(title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("target / pred", justify="right")
    if "ig" in methods:
        table.add_column("IG steps", justify="right")
        table.add_column("completeness error", justify="right")
    table.add_column("top feature (method: index)", overflow="fold")
    for ex in r.examples:
        row = [str(ex["index"]), f"{ex.get('target')} / {ex.get('prediction')}"]
        if "ig" in methods:
            ig = ex["methods"]["ig"]
            c = ig["completeness"]
            mark = ""
            if not c["converged"]:
                mark = " [red]✘ stalled[/]" if c.get("stalled") else " [red]✘ cap[/]"
            row += [str(ig["n_steps"]), f"{c['relative_error']:.1e}{mark}"]
        tops = "; ".join(
            f"{m}: {m_['top_features'][0]['index']}"
            for m, m_ in ex["methods"].items()
            if m_["top_features"]
        )
        row.append(escape(tops))
        table.add_row(*row)
    console.print(table)
    for ex in r.examples:
        for method, m in ex["methods"].items():
            if "token_scores" in m:
                line = Text(f"{ex['index']} {method}: ")
                line.append_text(_tokens(m["token_scores"]))
                console.print(line)
    checks = Table(
        title="sanity (cascading randomisation) and faithfulness (deletion)", title_justify="left"
    )
    checks.add_column("method")
    checks.add_column("Spearman |a| all random", justify="right")
    checks.add_column("signed", justify="right")
    checks.add_column("|a| vs |x|", justify="right")
    checks.add_column("deletion AUC / random", justify="right")
    checks.add_column("verdict", overflow="fold")
    for method in methods:
        s = r.sanity.get(method)
        f = r.faithfulness.get(method)
        verdict = []
        if s is not None:
            verdict.append(
                "[green]depends on the weights[/]"
                if s["passed"]
                else "[red]independent of the weights[/]"
            )
            if s["edge_detector"]:
                verdict.append("[yellow]edge detector?[/]")
        checks.add_row(
            method,
            f"{s['final_abs']:.2f}" if s else "-",
            f"{s['final_signed']:.2f}" if s else "-",
            f"{s['input_spearman']:.2f}" if s else "-",
            f"{f['auc']:.2f} / {f['random_auc']:.2f}" if f else "-",
            ", ".join(verdict),
        )
    console.print(checks)
    for note in r.notes:
        console.print(f"[dim]note: {escape(note)}[/]", highlight=False)

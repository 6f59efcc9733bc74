"""The report of a run folder: the paper's story in figures, texts and tables.

:func:`build_report` reads what the stages of :mod:`focuslens.app.stages` wrote and
assembles a :class:`~focuslens.Report` with one section per question, each present
only when its files are:

1. Overview: the conditions evaluated, with accuracy, 95 % interval and attention;
2. Contextual heads: layer x head maps of the relevant, distractor and sink scores
   (and of the gold-only prompt);
   Do they matter? The effect of ablating each head on log p(answer), exact and by
   attribution patching;
3. Where the contextual heads look: one example's attention, by document and zoomed
   on the relevant document;
4. Is attention the lever? Split-softmax on the top-k heads against k random heads;
5. Focus directions: their norms and training loss;
6. Steering with focus directions: accuracy and attention allocation against alpha;
7. Lost in the middle / number of documents: accuracy by gold position and by length.

:func:`headline` gives the key numbers that ``focuslens demo`` prints.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from focuslens import plots
from focuslens.app.run import RunFolder
from focuslens.evaluation.curves import (
    accuracy_table,
    paired_comparison,
    paired_verdict,
    wilson_interval,
)
from focuslens.heads import str_head
from focuslens.plots.report import Report
from focuslens.scores.attention import AttentionMap
from focuslens.scores.result import ContextualScores


def _acc(frame: pd.DataFrame) -> float:
    return float(frame["correct"].mean()) if len(frame) else float("nan")


def condition_table(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: accuracy, n, Wilson interval, mean attention, absent keys."""
    rows = []
    for name, group in evals.groupby("condition", sort=False):
        acc, n = _acc(group), len(group)
        low, high = wilson_interval(acc, n)
        row = {"condition": name, "accuracy": acc, "n": n, "low": low, "high": high}
        if "gold_position" in group.columns:
            absent = group["gold_position"].isna()
            if absent.any():
                row["accuracy (key present)"] = _acc(group[~absent])
                row["accuracy (key absent)"] = _acc(group[absent])
        for col in ("attn_relevant", "attn_distractors", "attn_sink"):
            if col in group.columns:
                row[col] = float(pd.to_numeric(group[col], errors="coerce").mean())
        rows.append(row)
    return pd.DataFrame(rows)


def best_condition(
    evals: pd.DataFrame, kind: str, head_set: str
) -> tuple[str, pd.DataFrame] | None:
    rows = evals[(evals["kind"] == kind) & (evals["head_set"] == head_set)]
    if not len(rows):
        return None
    accs = rows.groupby("condition", sort=False)["correct"].mean()
    name = str(accs.idxmax())
    return name, rows[rows["condition"] == name]


def headline(run_dir: str | Path) -> dict[str, Any]:
    """Key numbers of a run: accuracies of the baseline, gold-only prompt, best
    split-softmax and best steering conditions (top-k and random heads)."""
    evals = main_data(RunFolder(run_dir).evals())
    out: dict[str, Any] = {}
    if not len(evals):
        return out
    for kind, label in (("baseline", "baseline"), ("gold_only", "gold-only prompt")):
        part = evals[evals["kind"] == kind]
        if len(part):
            out[f"accuracy, {label}"] = round(_acc(part), 3)
    for kind, label in (("split_softmax", "split-softmax"), ("steering", "steering")):
        for head_set in ("top", "random"):
            best = best_condition(evals, kind, head_set)
            if best is not None:
                out[f"best {label}, {head_set} heads ({best[0]})"] = round(_acc(best[1]), 3)
    out["n test prompts"] = int((evals["kind"] == "baseline").sum()) or None
    return {k: v for k, v in out.items() if v is not None}


def _reference(evals: pd.DataFrame, kind: str) -> pd.DataFrame | None:
    part = evals[evals["kind"] == kind]
    return part if len(part) else None


def _sweep(evals: pd.DataFrame, kind: str, param: str) -> dict[str, dict[Any, pd.DataFrame]]:
    """``{"top-2 heads": {value: rows}}`` for the conditions of one kind."""
    part = evals[evals["kind"] == kind]
    out: dict[str, dict[Any, pd.DataFrame]] = {}
    if not len(part):
        return out
    for (head_set, k), group in part.groupby(["head_set", "k"], sort=False):
        series = out.setdefault(f"{head_set} {int(k)} heads", {})
        for value, rows in group.groupby(param, sort=False):
            series[_number(value)] = rows
    return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _number(value: Any) -> Any:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and not isinstance(value, float) else f


# A condition is "clearly" above or below the baseline when the paired test's p-value is
# below SIGNIFICANCE (focuslens.evaluation.curves), or, unpaired, when the 95 % intervals
# do not overlap.


def compare(frame: pd.DataFrame, base: pd.DataFrame) -> str:
    """``"clearly above"``, ``"clearly below"`` or ``"within noise of"`` the baseline.

    On the same prompts (the usual case: every condition answers the run's test prompts)
    the comparison is paired: the exact McNemar test on the prompts one condition gets
    right and the other wrong, at
    :data:`focuslens.evaluation.curves.SIGNIFICANCE`. Otherwise (pooled random-head
    sets, other prompts) the 95 % Wilson intervals of the two accuracies must not overlap.
    """
    return _verdict(frame, base, paired_comparison(frame, base))


def _verdict(frame: pd.DataFrame, base: pd.DataFrame, paired: dict[str, Any] | None) -> str:
    if paired is not None:
        word = paired_verdict(paired)
        return "within noise of" if word == "within noise" else f"clearly {word}"
    low, high = wilson_interval(_acc(frame), len(frame))
    base_low, base_high = wilson_interval(_acc(base), len(base))
    if low > base_high:
        return "clearly above"
    if high < base_low:
        return "clearly below"
    return "within noise of"


def _versus(name: str, frame: pd.DataFrame, base: pd.DataFrame) -> tuple[str, str]:
    paired = paired_comparison(frame, base)
    word = _verdict(frame, base, paired)
    text = f"{name}: {_acc(frame):.2f}, {word} the baseline ({_acc(base):.2f}"
    if paired is not None:
        text += (
            f"; on the same {paired['n']} prompts it gets {paired['fixed']} right that the "
            f"baseline gets wrong and {paired['broken']} the reverse, exact McNemar "
            f"p = {paired['p_value']:.2g}"
        )
    return word, text + ")"


def _fmt(value: float) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.2f}"
    )


# ---------------------------------------------------------------------- sections
def _overview(report: Report, run: RunFolder, evals: pd.DataFrame) -> None:
    if not len(evals):
        return
    table = condition_table(evals)
    text = (
        "Each condition answers the same test prompts greedily. Accuracy is exact match "
        "(the synthetic task) or best-subspan EM (QA); the interval is the 95% Wilson "
        "interval from the number of examples. attn_* columns are the mean attention mass "
        "of the answer tokens, over the chosen heads, on the relevant document, the "
        "distractors and the sink (first tokens). The sections below compare conditions "
        "with the baseline prompt by prompt (exact McNemar test, p < 0.05 for 'clearly'), "
        "which is tighter than comparing the intervals."
    )
    report.add_section("Overview", text, numbers=headline(run.folder), tables={"Conditions": table})


def _heads_section(report: Report, run: RunFolder) -> None:
    if not run.has("scores"):
        return
    scores = ContextualScores.load(run.path("scores"))
    heads = run.heads() if run.has("heads") else scores.top_heads(2)
    k = len(heads)
    panels: dict[str, Any] = {kind: scores[kind] for kind in ("relevant", "distractors", "sink")}
    gold = None
    if run.has("scores_gold"):
        gold = ContextualScores.load(run.path("scores_gold"))
        panels["relevant (gold-only prompt)"] = gold.relevant
    fig = plots.head_scores(
        panels, list(panels), top_k=k, title="Attention mass of the answer tokens, per head"
    )
    rel = scores.relevant.flatten()
    strong = int((rel > 0.1).sum())
    best = ", ".join(f"{str_head(h)} ({float(scores.relevant[h]):.2f})" for h in heads)
    text = (
        f"A head's contextual score is the attention mass its answer rows put on the relevant "
        f"document, averaged over {scores.n_examples} prompts (METHOD.md section 2). "
        f"{strong} of {rel.numel()} heads score above 0.1; the top {k}, marked, are the "
        f"contextual heads used below: {best}. The distractor panel sums all distractor "
        "documents; the sink panel is the mass on the first tokens."
    )
    if scores.span_names:
        named = ", ".join(scores.span_names)
        text += f" The table also gives the mass on the prompts' named spans ({named})."
    frame = scores.to_dataframe().pivot_table(
        index=["layer", "head"], columns="kind", values="score"
    )
    frame = frame.reset_index().sort_values("relevant", ascending=False)
    if gold is not None:
        frame["relevant (gold-only)"] = [
            float(gold.relevant[l, h]) for l, h in zip(frame.layer, frame["head"])
        ]
    numbers = {
        "contextual heads": " ".join(str_head(h) for h in heads),
        "best relevant score": f"{float(rel.max()):.3f}",
        "heads above 0.1": f"{strong} / {rel.numel()}",
    }
    report.add_section(
        "Contextual heads",
        text,
        numbers=numbers,
        figures=[fig],
        tables={"Scores per head (sortable)": frame.head(50)},
    )


def _effects_section(report: Report, run: RunFolder) -> None:
    if not run.has("effects"):
        return
    from focuslens.app.stages import PATCHING, read_effect_intervals, read_effects
    from focuslens.heads import rank_correlation

    tables = read_effects(run)
    intervals = read_effect_intervals(run)
    n = run.settings().get("effects", {}).get("n_prompts")
    ablations = {k: v for k, v in tables.items() if k != PATCHING}
    fig = plots.head_effects(
        ablations,
        label="change in log p(answer)",
        title="Effect of ablating each head on log p(answer)",
    )
    names = list(ablations)
    numbers: dict[str, Any] = {}
    text = (
        "Do the contextual heads matter for the answer? Each head's output is set to zero, one "
        "head at a time, and the change in the log-probability of the gold answer is measured "
        "(left, exact); attribution patching estimates all of them from one forward and "
        "backward pass (right). Blue: the answer becomes less likely without the head"
        + (f" ({n} prompts)." if n else ".")
    )
    if len(names) == 2:
        rho = rank_correlation(tables[names[0]], tables[names[1]])
        numbers["rank correlation (Spearman)"] = f"{rho:.2f}"
    ablation = tables[names[0]]
    worst = divmod(int(ablation.argmin()), ablation.shape[1])
    numbers["most needed head"] = f"{str_head(worst)} ({float(ablation[worst]):.2f})"
    figures = [fig]
    if PATCHING in tables:
        patched = tables[PATCHING]
        figures.append(
            plots.head_effects(
                {PATCHING: patched},
                label="change in log p(answer)",
                title="Effect of patching each head from the gold-only prompt",
                ci={PATCHING: intervals[PATCHING]} if PATCHING in intervals else None,
            )
        )
        best = divmod(int(patched.argmax()), patched.shape[1])
        text += (
            " Ablation finds the heads the answer needs on every prompt. Whether the "
            "distractors' harm passes through a head is a narrower question, which patching "
            "answers (second figure): the head's output at the answer rows is taken from the "
            "prompt's gold-only variant (the relevant document alone) and written into the "
            "distracted run; red: the answer becomes more likely. Hover a head for its 95 % "
            "bootstrap interval over prompts."
        )
        label = f"{str_head(best)} ({float(patched[best]):+.2f}"
        if PATCHING in intervals:
            low, high = (float(t[best]) for t in intervals[PATCHING])
            label += f", 95 % [{low:+.2f}, {high:+.2f}]"
        numbers["head that patching helps most"] = label + ")"
        if run.has("scores"):
            scores = ContextualScores.load(run.path("scores"))
            rho = rank_correlation(scores.relevant, patched)
            numbers["contextual score vs patching (Spearman)"] = f"{rho:.2f}"
    report.add_section(
        "Do the contextual heads matter? Ablation and patching",
        text,
        numbers=numbers,
        figures=figures,
    )


def _attention_section(report: Report, run: RunFolder) -> None:
    if not run.has("attention"):
        return
    amap = AttentionMap.load(run.path("attention"))
    figs = [plots.attention_figure(amap, level="documents", title="Attention by document")]
    if amap.relevant is not None:
        figs.append(
            plots.attention_figure(amap, window="relevant", title="Zoom: relevant document")
        )
    segments, mass = amap.by_segment()
    names = [s.name for s in segments]
    rel = [i for i, s in enumerate(segments) if s.kind == "relevant"]
    share = (
        ", ".join(
            f"{name} {float(mass[i].mean(0)[rel[0]]):.2f}"
            for i, name in enumerate(amap.head_names())
        )
        if rel
        else "no relevant document in this example"
    )
    text = (
        f"One test prompt ({len(names) - 3 if 'response' in names else len(names) - 2} documents, "
        f"{amap.n_prompt} prompt tokens): the attention of each answer token of the top heads over "
        "the prompt, summed per document (top), and token by token around the relevant document "
        "(bottom). The strip above the map marks the sink (purple), the relevant document "
        "(green) and the distractors (orange); the dropdown switches heads. Mean mass on the "
        f"relevant document per head: {share}."
    )
    report.add_section("Where the contextual heads look", text, figures=figs)


def _split_softmax_section(report: Report, evals: pd.DataFrame) -> None:
    sweep = _sweep(evals, "split_softmax", "tau")
    if not sweep:
        return
    base, gold = _reference(evals, "baseline"), _reference(evals, "gold_only")
    fig = plots.accuracy_curves(
        sweep, x="tau", baseline=base, gold_only=gold, title="Split-softmax: accuracy against tau"
    )
    figs = [fig]
    top = [name for name in sweep if name.startswith("top")]
    if top and "attn_relevant" in evals.columns:
        figs.append(
            plots.allocation(
                sweep[top[0]],
                x="tau",
                title=f"Split-softmax on the {top[0]}: where the attention goes",
            )
        )
    table = accuracy_table(sweep, x="tau")
    text = (
        "Split-softmax rescales, in the chosen heads only, the attention mass p on the relevant "
        "document to p ** tau (tau < 1 boosts it; tau = 1 is the identity; tau > 1 takes mass "
        "away), at every query position. It needs the span labels: an oracle showing whether "
        "attention is the lever, not a method. The paper's pattern (Llama-3.2-3B): boosting "
        "the top-k contextual heads helps, boosting random heads does not. "
        f"Gold-only prompt: {_fmt(_acc(gold) if gold is not None else None)}."
    )
    if base is not None:
        words = {}
        for head_set in ("top", "random"):
            best = best_condition(evals, "split_softmax", head_set)
            if best is not None:
                words[head_set], sentence = _versus(
                    f"best {head_set}-heads condition ({best[0]})", best[1], base
                )
                text += f" {sentence[0].upper()}{sentence[1:]}."
        holds = words.get("top") == "clearly above" and words.get("random") != "clearly above"
        text += f" The paper's pattern {'holds' if holds else 'does not hold'} on this run."
    report.add_section(
        "Is attention the lever? Split-softmax",
        text,
        figures=figs,
        tables={"Accuracy against tau": table},
    )


def _directions_section(report: Report, run: RunFolder) -> None:
    if not run.has("directions"):
        return
    from focuslens.directions.core import FocusDirections

    fd = FocusDirections.load(run.path("directions"))
    norms = fd.norms()
    fig = plots.head_scores(
        {"|d_q|": norms["q"], "|d_k|": norms["k"]},
        ["|d_q|", "|d_k|"],
        top_k=len(fd.heads[:5]),
        title="Norms of the focus directions",
    )
    figs = [fig]
    history = fd.training.get("loss_history") or {}
    if history:
        import plotly.graph_objects as go

        loss = go.Figure(
            [go.Scatter(y=v, name=f"layer {layer}", mode="lines") for layer, v in history.items()]
        )
        loss.update_layout(
            title="Training loss (minus relevant-span mass)",
            template="plotly_white",
            xaxis_title="step",
            yaxis_title="loss",
        )
        figs.append(loss)
    t = fd.training
    text = (
        f"Query and key directions per head, {t.get('method', '?')} on {t.get('n_prompts', '?')} "
        f"prompts ({t.get('epochs', '?')} epochs, lr {t.get('lr', '?')}), each layer on its own: "
        "the loss is minus the relevant-span mass of the response rows. The key direction "
        "cancels in the softmax, so its norm stays near its initial value."
    )
    numbers = {k: t[k] for k in ("method", "epochs", "lr", "n_prompts") if k in t}
    report.add_section("Focus directions", text, numbers=numbers, figures=figs)


def _steering_section(report: Report, evals: pd.DataFrame) -> None:
    sweep = _sweep(evals, "steering", "alpha")
    if not sweep:
        return
    base, gold = _reference(evals, "baseline"), _reference(evals, "gold_only")
    figs = [
        plots.accuracy_curves(
            sweep,
            x="alpha",
            baseline=base,
            gold_only=gold,
            title="Focus directions: accuracy against alpha",
        )
    ]
    top = [name for name in sweep if name.startswith("top")]
    if top and "attn_relevant" in evals.columns:
        figs.append(
            plots.allocation(
                sweep[top[0]], x="alpha", title=f"Steering the {top[0]}: where the attention goes"
            )
        )
    table = accuracy_table(sweep, x="alpha")
    text = (
        "Steering adds alpha times the learned query direction to the queries of the chosen "
        "heads, at every position, with no span labels at inference. Negative alpha is a "
        "negative focus direction, which should distract the model further. "
    )
    if base is not None:
        top = evals[(evals["kind"] == "steering") & (evals["head_set"] == "top")]
        by_alpha = {a: rows for a, rows in top.groupby("alpha", sort=False)}
        positive = {a: r for a, r in by_alpha.items() if _is_number(a) and float(a) > 0}
        negative = {a: r for a, r in by_alpha.items() if _is_number(a) and float(a) < 0}
        if positive:
            a = max(positive, key=lambda k: _acc(positive[k]))
            text += _versus(f"Best positive alpha ({a})", positive[a], base)[1] + ". "
        if negative:
            a = min(negative, key=lambda k: _acc(negative[k]))
            text += _versus(f"Worst negative alpha ({a})", negative[a], base)[1] + ". "
        if "auto" in by_alpha:
            rows = by_alpha["auto"]
            chosen = ""
            if "mean_alpha" in rows.columns and rows["mean_alpha"].notna().any():
                chosen = f"; mean alpha chosen {rows['mean_alpha'].mean():.2f}"
            label = f"alpha='auto' (focuslens's own magnitude rule, not the paper's{chosen})"
            text += _versus(label, rows, base)[1] + ". "
        best = best_condition(evals, "steering", "random")
        if best is not None:
            text += _versus(f"Best with random heads ({best[0]})", best[1], base)[1] + "."
    report.add_section(
        "Steering with focus directions",
        text,
        figures=figs,
        tables={"Accuracy against alpha": table},
    )


def _by_column_section(
    report: Report, every: pd.DataFrame, main: pd.DataFrame, column: str, title: str, text: str
) -> None:
    """Accuracy grouped by ``column`` for the baseline and the best top-k conditions (chosen
    on the main prompt set; their rows on every prompt set are used)."""
    base = every[every["kind"] == "baseline"]
    if column not in base.columns or base[column].dropna().nunique() < 2:
        return
    curves: dict[str, pd.DataFrame] = {"baseline": base}
    for kind in ("split_softmax", "steering"):
        best = best_condition(main, kind, "top")
        if best is not None:
            curves[best[0]] = every[every["condition"] == best[0]]
    fig = plots.accuracy_curves(curves, x=column, title=title)
    report.add_section(title, text, figures=[fig], tables={title: accuracy_table(curves, x=column)})


def main_data(evals: pd.DataFrame) -> pd.DataFrame:
    """The rows of the main prompt set: the data label of the first baseline evaluated
    (else of the first row). Other labels only feed the by-number-of-documents plot."""
    if not len(evals) or "data" not in evals.columns:
        return evals
    base = evals[evals["kind"] == "baseline"]
    label = (base if len(base) else evals)["data"].iloc[0]
    return evals[evals["data"] == label]


def build_report(
    run_dir: str | Path, *, title: str = "focuslens report", settings: dict | None = None
) -> Report:
    """Assemble the report of a run folder (sections whose files are missing are left out)."""
    run = RunFolder(run_dir)
    if not run.folder.is_dir():
        raise FileNotFoundError(f"run folder {run.folder} does not exist")
    run.check_consistent()
    every = run.evals()
    evals = main_data(every)
    report = Report(title, settings={**_flat_settings(run.settings()), **(settings or {})})
    _overview(report, run, evals)
    _heads_section(report, run)
    _effects_section(report, run)
    _attention_section(report, run)
    _split_softmax_section(report, evals)
    _directions_section(report, run)
    _steering_section(report, evals)
    if len(evals):
        _by_column_section(
            report,
            evals,
            evals,
            "gold_position",
            "Accuracy by gold position",
            "Lost in the middle: accuracy by the 0-based position of the relevant "
            "document, for the baseline and the best top-k conditions.",
        )
        _by_column_section(
            report,
            every,
            evals,
            "n_documents",
            "Accuracy by number of documents",
            "Accuracy as distractors are added, for the baseline and the best top-k conditions.",
        )
    if not report.sections:
        report.add_section(
            "Nothing to show yet",
            f"The run folder {run.folder} holds no results; "
            "run `focuslens scores`, `learn`, `eval` or `steer` into it first.",
        )
    return report


def _flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for stage, values in settings.items():
        if isinstance(values, dict):
            out.update({f"{stage}.{k}": v for k, v in values.items()})
        else:
            out[stage] = values
    return out


__all__ = [
    "best_condition",
    "build_report",
    "condition_table",
    "headline",
    "main_data",
]

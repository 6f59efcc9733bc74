"""The stages of the paper's experiment, each a plain function on a model, prompts and a
:class:`~focuslens.app.run.RunFolder`: it writes its result where the next stage (and the
report) reads it. The command line (``focuslens scores|learn|eval|steer``) is a thin layer
over these functions, and a notebook can call them too.

Which responses do the scores read (``response=``)? Those of
:func:`focuslens.model.responses.with_responses`: ``"given"`` uses each prompt's
``response`` (the synthetic task's gold answer); ``"generated"`` answers each prompt
greedily first (the authors' contextual-score recipe); ``"auto"`` is ``"given"`` when
every prompt has a response and ``"generated"`` otherwise. Prompts whose greedy answer is
empty are left out, and their number is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from focuslens.app.run import Condition, RunFolder, digest, record_rows
from focuslens.evaluation.accuracy import EvalResult, evaluate
from focuslens.evaluation.experiments import HeadExperiment, contextual_head_experiment
from focuslens.model.responses import with_responses
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.attention import attention_map_data
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.result import ContextualScores
from focuslens.typing import Model


def stage_eval(
    model: Model,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    condition: Condition | None = None,
    *,
    intervention: Any = None,
    measure_heads: Sequence[tuple[int, int]] | None = None,
    max_new_tokens: int | None = None,
    data: str = "test",
    progress: bool = True,
) -> EvalResult:
    """Evaluate one condition and store its rows in ``evals.jsonl``.

    ``Condition("gold_only")`` evaluates the gold-only variant of each prompt; the other
    kinds evaluate the prompts as they are, under ``intervention`` (for example
    ``condition.intervention(heads, directions)``). ``data`` labels the prompt set (e.g.
    ``"test"``, ``"16 documents"``); rows of the same condition and data label from an
    earlier run are replaced. With ``alpha="auto"`` the rows also carry ``mean_alpha``,
    the mean of the alphas the rule chose.
    """
    condition = condition or Condition()
    if condition.kind == "gold_only":
        prompts = [p.gold_only() for p in prompts if p.relevant is not None]
    result = evaluate(
        model,
        prompts,
        intervention=intervention,
        heads=measure_heads,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    frame = result.to_dataframe()
    chosen = getattr(intervention, "history", None)
    if condition.alpha == "auto" and chosen:  # the alphas the rule picked, one per pass
        frame["mean_alpha"] = sum(chosen) / len(chosen)
    record_rows(run, condition, frame, data)
    return result


def stage_experiment(
    model: Model,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    *,
    taus: Sequence[float],
    seed: int = 0,
    measure_heads: Sequence[tuple[int, int]] | None = None,
    max_new_tokens: int | None = None,
    data: str = "test",
    progress: bool = True,
) -> HeadExperiment:
    """The split-softmax experiment (:func:`focuslens.contextual_head_experiment`) on the
    run's top-k heads: baseline, gold-only, and split-softmax on the top-k heads and on one
    random draw of k heads (seed ``seed``) at each tau; every condition's rows go to
    ``evals.jsonl``."""
    heads = run.heads()
    scores = ContextualScores.load(run.need("scores", "scores"))
    experiment = contextual_head_experiment(
        model,
        prompts,
        ks=[len(heads)],
        taus=taus,
        scores=scores,
        n_random=1,
        seed=seed,
        many=0,
        measure_heads=measure_heads if measure_heads is not None else heads,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    kinds = {"top_k": "top", "random_k": "random"}
    keys = ["condition", "k", "tau", "seed"]
    for (name, k, tau, _), rows in experiment.examples.groupby(keys, sort=False, dropna=False):
        if name in ("baseline", "gold_only"):
            condition = Condition(name)
        else:
            condition = Condition("split_softmax", kinds[name], int(k), tau=float(tau))
        record_rows(run, condition, rows.drop(columns=keys), data)
    return experiment


def _is_focuslens_folder(path: Path) -> bool:
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    return "architectures" not in json.loads(config.read_text())


def load_any_model(
    spec: str, *, dtype: str = "float32", device: str = "cpu", backend: str | None = None
) -> Any:
    """Load ``"demo"``, a focuslens model folder (``config.json`` with a
    ``HookedTransformerConfig``, ``model.safetensors``, ``tokenizer.json``, as the demo
    model's), a Hugging Face model folder, or a TransformerLens model name.

    ``backend`` (``"hooked"`` or ``"bridge"``, default: hooked where transformer-lens has
    it) applies to the demo model and focuslens folders (:func:`focuslens.load_demo_model`).

    Raises:
        ValueError: Unknown model name or a folder that is not a model.
        RuntimeError: Weights not reachable offline (the message says how to fix it).
    """
    from focuslens.model.loading import DTYPES, load_model

    path = Path(spec)
    if spec == "demo" or (path.is_dir() and _is_focuslens_folder(path)):
        from focuslens.demo import load_demo_model

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        folder = None if spec == "demo" else path
        model = load_demo_model(folder, device=None if device == "cpu" else device, backend=backend)
        return model if dtype == "float32" else model.to(DTYPES[dtype])
    if backend is not None:
        raise ValueError(
            f"backend={backend!r} applies to the demo model and focuslens model folders; "
            f"{spec!r} loads as a HookedTransformer under transformer-lens 3.x and as a "
            "TransformerBridge under 4.x (a Hugging Face folder: always a bridge)"
        )
    return load_model(spec, dtype=dtype, device=device)


def _model_name(model: Model) -> str | None:
    return getattr(model.cfg, "model_name", None)


def stage_scores(
    model: Model,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    *,
    k: int = 2,
    query: str = "response",
    sink: int = 2,
    batch_size: int = 8,
    response: str = "auto",
    example: int = 0,
    progress: bool = True,
) -> ContextualScores:
    """Contextual scores on the prompts (and their gold-only variants), the top-k heads,
    and one example's attention map; written to the run folder.

    Prompts without a relevant document (absent-key queries) are left out: a contextual
    score needs a relevant span. Their number is recorded in ``settings.json``.
    """
    n_given = len(prompts)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= n_heads:
        raise ValueError(
            f"k must be an int between 1 and {n_heads} (the number of heads), got {k!r}"
        )
    prompts = [p for p in prompts if p.relevant is not None]
    if not prompts:
        raise ValueError("no prompt has a relevant document; contextual scores need one")
    inputs = digest(
        [p.text for p in prompts], [p.response for p in prompts], k, query, sink, response
    )
    stale = run.later_results("scores")
    previous = run.settings().get("scores")
    if stale and previous is not None and previous.get("inputs") != inputs:
        raise ValueError(
            f"{run.folder} holds results computed from other contextual scores "
            f"({', '.join(stale)}); new scores would leave them stale. Use a new run folder, "
            "or delete those files to start over"
        )
    answered, skipped = with_responses(model, prompts, response)
    kw = {"query": query, "sink": sink, "batch_size": batch_size, "progress": progress}
    scores = contextual_scores(model, answered, **kw)
    heads = scores.top_heads(k)
    gold = None
    if all(p.has_variants for p in answered):
        gold = contextual_scores(model, [p.gold_only() for p in answered], **kw)
    amap = attention_map_data(
        model, answered[example % len(answered)], heads, query=query, sink=sink
    )
    with run.writing("scores") as tmp:
        scores.save(tmp)
    with run.writing("heads") as tmp:
        tmp.write_text(json.dumps([list(h) for h in heads]))
    if gold is not None:
        with run.writing("scores_gold") as tmp:
            gold.save(tmp)
    elif run.has("scores_gold"):
        run.path("scores_gold").unlink()  # the gold scores of other prompts: not these
    with run.writing("attention") as tmp:
        amap.save(tmp)
    settings = {
        "inputs": inputs,
        "model": _model_name(model),
        "n_prompts": len(answered),
        "n_without_relevant": n_given - len(prompts),
        "n_empty_answers": len(skipped),
        "k": k,
        "query": query,
        "sink": sink,
        "response": response,
        "top_heads": [list(h) for h in heads],
    }
    run.record("scores", settings)
    return scores


def stage_effects(
    model: Model, prompts: Sequence[LabeledPrompt], run: RunFolder, *, batch_size: int = 8
) -> dict[str, Any]:
    """Zero-ablation effect of each head on log p(answer), its attribution-patching
    estimate, and (for prompts built from documents with a relevant one) the effect of
    patching the head's output from the gold-only prompt, with its 95 % bootstrap
    interval; saved as ``effects.safetensors`` (one ``[n_layers, n_heads]`` table each;
    the interval as ``<name> low`` and ``<name> high``)."""
    from safetensors.torch import save_file

    from focuslens.interventions.effects import ablation_effects, attribution_patching
    from focuslens.interventions.patching import patch_heads

    target = "response" if all(p.response for p in prompts) else "answer"
    kw = {"target": target, "batch_size": batch_size}
    tables = {
        "zero ablation": ablation_effects(model, prompts, **kw).values,
        "attribution patching": attribution_patching(model, prompts, **kw).values,
    }
    patchable = [p for p in prompts if p.has_variants and p.relevant is not None]
    if len(patchable) >= 2:
        patched = patch_heads(model, patchable, source="gold_only", **kw)
        low, high = patched.ci(0.95)
        tables.update(
            {
                PATCHING: patched.values,
                f"{PATCHING} low": low,
                f"{PATCHING} high": high,
            }
        )
    with run.writing("effects") as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tables.items()}, str(tmp))
    run.record(
        "effects",
        {
            "n_prompts": len(prompts),
            "n_patched": len(patchable) if PATCHING in tables else 0,
            "target": target,
            "mode": "zero",
        },
    )
    return tables


PATCHING = "gold-only patching"
"""The name of the patching table in ``effects.safetensors``."""


def read_effects(run: RunFolder) -> dict[str, Any]:
    """The tables that :func:`stage_effects` saved (intervals left out: see
    :func:`read_effect_intervals`)."""
    from safetensors.torch import load_file

    tables = load_file(str(run.need("effects", "scores --effects")))
    tables = {k: v for k, v in tables.items() if not k.endswith((" low", " high"))}
    order = [k for k in ("zero ablation", "attribution patching", PATCHING) if k in tables]
    return {k: tables[k] for k in [*order, *sorted(set(tables) - set(order))]}


def read_effect_intervals(run: RunFolder) -> dict[str, tuple[Any, Any]]:
    """``{name: (low, high)}`` of the tables that :func:`stage_effects` saved intervals for."""
    from safetensors.torch import load_file

    tables = load_file(str(run.need("effects", "scores --effects")))
    return {
        k[: -len(" low")]: (v, tables[k[: -len(" low")] + " high"])
        for k, v in tables.items()
        if k.endswith(" low")
    }


def stage_learn(
    model: Model,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    method: str = "learned",
    seed: int = 0,
    batch_size: int = 1,
    response: str = "auto",
    progress: bool = True,
) -> Any:
    """Learn focus directions for the layers of ``heads`` (default: ``heads.json``).

    ``response``: ``"gold_only"`` (the authors' recipe: answer each gold-only variant),
    ``"given"`` (each prompt's own response), or ``"auto"``: ``"gold_only"`` when every
    prompt was built from documents, else ``"given"`` (e.g. a "labeled" prompt file).
    """
    from focuslens.directions.learn import learn_focus_directions

    heads = list(heads) if heads is not None else run.heads()
    prompts = [p for p in prompts if p.relevant is not None]
    if response == "auto":
        response = "gold_only" if all(p.has_variants for p in prompts) else "given"
    directions = learn_focus_directions(
        model,
        prompts,
        response=response,
        heads=heads,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        method=method,
        progress=progress,
    )
    run.folder.mkdir(parents=True, exist_ok=True)
    with run.writing("directions") as tmp:
        directions.save(tmp)
    run.record(
        "learn",
        {
            "model": _model_name(model),
            "n_prompts": len(prompts),
            "epochs": epochs,
            "lr": lr,
            "method": method,
            "seed": seed,
            "response": response,
            "heads": [list(h) for h in heads],
            "heads_digest": run.heads_digest(),
        },
    )
    return directions


__all__ = [
    "stage_eval",
    "stage_experiment",
    "load_any_model",
    "stage_scores",
    "stage_effects",
    "read_effects",
    "stage_learn",
]

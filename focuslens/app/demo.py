"""``focuslens demo``: the paper's story end to end on the shipped demo model.

1. **Contextual scores** on training prompts at :data:`focuslens.demo.DISTRACTING_DOCS`
   documents (teacher-forced gold answers), the top-k contextual heads, an attention
   map of one prompt, and the effect of ablating each head on the answer;
2. **Baseline and gold-only** accuracy on held-out test prompts;
3. **Split-softmax check**: boost the relevant-span mass of the top-k heads (an
   oracle), against k random heads;
4. **Focus directions** learned on the training prompts (the authors' recipe);
5. **Steering sweep**: accuracy and attention allocation against alpha (and
   ``"auto"``), top-k heads against random heads;
6. **Length** (full run only): baseline and the best top-k conditions at other
   numbers of documents;
7. **Report**: ``OUT/report.html``, self-contained.

``quick=True`` runs fewer prompts and settings (under a minute on two cores, for
tests); the default is sized for a few minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from focuslens.app.run import RUN_FILES, Condition, RunFolder
from focuslens.app.stages import (
    load_any_model,
    stage_effects,
    stage_eval,
    stage_experiment,
    stage_learn,
    stage_scores,
)
from focuslens.heads import random_control


@dataclass(frozen=True)
class DemoPlan:
    """What the demo runs (see :data:`QUICK` and :data:`FULL`)."""

    n_train: int
    n_test: int
    k: int
    taus: tuple[float, ...]
    alphas: tuple[float | str, ...]
    random_alphas: tuple[float, ...]
    epochs: int
    lengths: tuple[int, ...]
    n_length: int
    n_effects: int = 16
    max_new_tokens: int | None = None  # None: the task's own (prompt.meta)


QUICK = DemoPlan(
    n_train=16,
    n_test=24,
    k=3,
    taus=(0.1,),
    alphas=(-4.0, 4.0),
    random_alphas=(4.0,),
    epochs=2,
    lengths=(),
    n_length=0,
    n_effects=8,
)
FULL = DemoPlan(
    n_train=64,
    n_test=200,
    k=3,
    taus=(0.1, 0.5, 2.0),
    alphas=(-4.0, -2.0, -1.0, 1.0, 2.0, 4.0, 8.0, "auto"),
    random_alphas=(4.0,),
    epochs=10,
    lengths=(24, 48),
    n_length=50,
)


def _clear(run: RunFolder) -> None:
    for name in RUN_FILES.values():
        path = run.folder / name
        if path.is_file():
            path.unlink()


def run_demo(
    out: str | Path,
    *,
    quick: bool = False,
    model: str = "demo",
    seed: int = 0,
    progress: bool = True,
    threads: int | None = 1,
    echo: Callable[[str], None] = print,
    backend: str | None = None,
) -> dict[str, Any]:
    """Run the demo into ``out`` (its earlier results are replaced) and write the report.

    Args:
        out: The run folder.
        quick: Run :data:`QUICK` instead of :data:`FULL`.
        model: The model (default: the shipped demo model).
        seed: Seed of the prompts and the random heads.
        progress: Show progress bars.
        threads: Torch threads while the demo runs (restored after). One is fastest for
            the tiny demo model: its operations are too small to gain from threads, and
            on a busy machine the threads' synchronisation costs much more than it saves.
        echo: Where the stage lines go.
        backend: ``"hooked"`` or ``"bridge"`` for the demo model (default: hooked where
            transformer-lens has it); see :func:`focuslens.load_demo_model`.

    Returns:
        The headline numbers (:func:`focuslens.app.story.headline`) and the time taken.
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out, quick, model, seed, progress, echo, backend)
    finally:
        torch.set_num_threads(before)


def _run_demo(out, quick, model, seed, progress, echo, backend=None) -> dict[str, Any]:
    from focuslens.app.story import build_report, headline

    plan = QUICK if quick else FULL
    run = RunFolder(out)
    run.folder.mkdir(parents=True, exist_ok=True)
    _clear(run)
    start = time.perf_counter()
    lm = load_any_model(model, backend=backend)
    stamped = lambda msg: echo(f"{msg}  [{time.perf_counter() - start:.0f} s]")  # noqa: E731
    _stages(lm, run, plan, seed, progress, stamped)
    elapsed = time.perf_counter() - start
    settings = {
        "demo": "quick" if quick else "full",
        "model": model,
        "seed": seed,
        **{f"plan.{k}": v for k, v in asdict(plan).items()},
        "elapsed (s)": round(elapsed, 1),
    }
    report = build_report(
        run.folder, title="focuslens demo: focus directions on the demo model", settings=settings
    )
    report.save(run.folder / "report.html")
    return {**headline(run.folder), "time (s)": round(time.perf_counter() - start, 1)}


def _stages(model, run, plan: DemoPlan, seed, progress, echo) -> None:
    from focuslens.demo import DISTRACTING_DOCS
    from focuslens.tasks.synthetic import synthetic_retrieval

    n_docs = DISTRACTING_DOCS
    train = synthetic_retrieval(plan.n_train, n_documents=n_docs, seed=seed)
    test = synthetic_retrieval(plan.n_test, n_documents=n_docs, seed=seed + 1)
    echo(f"[1/5] contextual scores on {len(train)} prompts of {n_docs} documents, ablation")
    stage_scores(model, train, run, k=plan.k, progress=progress)
    stage_effects(model, train[: plan.n_effects], run)
    heads = run.heads()
    control = list(random_control(heads, model, seed=seed))
    kw = {"measure_heads": heads, "max_new_tokens": plan.max_new_tokens, "progress": progress}
    echo(
        f"[2/5] baseline, gold-only, and split-softmax on the top {len(heads)} heads and on "
        f"{len(heads)} random heads, on {len(test)} test prompts"
    )
    stage_experiment(model, test, run, taus=plan.taus, seed=seed, **kw)
    echo(f"[3/5] learning focus directions ({plan.epochs} epochs, {len(train)} prompts)")
    # Learn the layers of the random control too, so that it can be steered as well.
    learned = list(heads) + [h for h in control if h not in heads]
    directions = stage_learn(
        model, train, run, heads=learned, epochs=plan.epochs, seed=seed, progress=progress
    )
    echo(
        f"[4/5] steering sweep: alpha in {list(plan.alphas)} (random heads: {list(plan.random_alphas)})"
    )
    sets = {"top": heads, "random": control}
    for name, alphas in (("top", plan.alphas), ("random", plan.random_alphas)):
        for alpha in alphas:
            condition = Condition("steering", name, len(heads), alpha=alpha)
            intervention = condition.intervention(sets[name], directions)
            stage_eval(model, test, run, condition, intervention=intervention, **kw)
    if plan.lengths:
        _lengths(model, run, plan, seed, directions, heads, kw, echo)


def _lengths(model, run, plan: DemoPlan, seed, directions, heads, kw, echo) -> None:
    from focuslens.app.story import best_condition, main_data
    from focuslens.tasks.synthetic import synthetic_retrieval

    echo(f"[5/5] baseline and best top-k conditions at {list(plan.lengths)} documents")
    evals = main_data(run.evals())
    best = [best_condition(evals, kind, "top") for kind in ("split_softmax", "steering")]
    conditions = [Condition()] + [Condition.from_row(b[1].iloc[0]) for b in best if b is not None]
    for n_docs in plan.lengths:
        prompts = synthetic_retrieval(plan.n_length, n_documents=n_docs, seed=seed + 2)
        for condition in conditions:
            intervention = condition.intervention(heads, directions)
            stage_eval(
                model,
                prompts,
                run,
                condition,
                intervention=intervention,
                data=f"{n_docs} documents",
                **kw,
            )


__all__ = [
    "FULL",
    "QUICK",
    "DemoPlan",
    "run_demo",
]

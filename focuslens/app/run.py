"""The paper's experiment as stages that read and write one run folder.

Each stage is a plain function on a model, prompts and a :class:`RunFolder`; it writes
its result where the next stage (and :func:`focuslens.app.story.build_report`) reads it.
The command line (``focuslens scores|learn|eval|steer|report|demo``) is a thin layer
over these functions, and a notebook can call them too.

Files of a run folder (:data:`RUN_FILES`):

* ``scores.safetensors`` and ``scores_gold.safetensors``: :class:`~focuslens.ContextualScores`
  on the prompts and on their gold-only variants;
* ``heads.json``: the top-k contextual heads, best first, in the authors'
  ``[[layer, head], ...]`` format;
* ``attention.safetensors``: an :class:`~focuslens.AttentionMap` of one example for
  the top heads;
* ``effects.safetensors``: per-head effects on the answer's log-probability of zero
  ablation (exact) and attribution patching (first-order), one table each;
* ``directions.safetensors``: :class:`~focuslens.directions.FocusDirections`;
* ``evals.jsonl``: every evaluated example of every condition, one JSON object per
  line (the columns of :meth:`~focuslens.EvalResult.to_dataframe` plus ``condition``,
  ``kind``, ``head_set``, ``k``, ``tau``, ``alpha``); re-running a condition replaces
  its rows;
* ``settings.json``: the settings of each stage, by stage name.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from focuslens.evaluation.accuracy import EvalResult, evaluate
from focuslens.heads import ranked_from_json
from focuslens.model.responses import with_responses
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.attention import attention_map_data
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.result import ContextualScores

RUN_FILES = {
    "scores": "scores.safetensors",
    "scores_gold": "scores_gold.safetensors",
    "heads": "heads.json",
    "attention": "attention.safetensors",
    "effects": "effects.safetensors",
    "directions": "directions.safetensors",
    "evals": "evals.jsonl",
    "settings": "settings.json",
}
"""Stage result -> file name inside a run folder."""

EVAL_KINDS = ("baseline", "gold_only", "split_softmax", "steering")


@dataclass(frozen=True)
class RunFolder:
    """A folder holding the files of one run (created on first write)."""

    folder: Path

    def __init__(self, folder: str | Path) -> None:
        object.__setattr__(self, "folder", Path(folder))

    def path(self, name: str) -> Path:
        """The path of a result (a key of :data:`RUN_FILES`)."""
        return self.folder / RUN_FILES[name]

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    def need(self, name: str, made_by: str) -> Path:
        """The path of a result that must exist, else an error saying which command makes it."""
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run `focuslens {made_by}` first")
        return path

    def settings(self) -> dict[str, Any]:
        path = self.path("settings")
        return json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, settings: dict[str, Any]) -> None:
        """Store a stage's settings in ``settings.json`` (replacing that stage's entry)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        merged = self.settings()
        merged[stage] = settings
        self.path("settings").write_text(json.dumps(merged, indent=2, default=str))

    def heads(self) -> list[tuple[int, int]]:
        """The ranked heads of ``heads.json``."""
        return ranked_from_json(self.need("heads", "scores"))

    def evals(self) -> pd.DataFrame:
        """All evaluated examples, every data label (empty when nothing was evaluated)."""
        path = self.path("evals")
        if not path.is_file() or path.stat().st_size == 0:
            return pd.DataFrame(columns=["condition", "data", "kind", "correct"])
        return pd.read_json(path, lines=True, dtype=False)


def _is_focuslens_folder(path: Path) -> bool:
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    return "architectures" not in json.loads(config.read_text())


def load_any_model(spec: str, *, dtype: str = "float32", device: str = "cpu") -> Any:
    """Load ``"demo"``, a focuslens model folder (``config.json`` with a
    ``HookedTransformerConfig``, ``model.safetensors``, ``tokenizer.json``, as the demo
    model's), a Hugging Face model folder, or a TransformerLens model name.

    Raises:
        ValueError: Unknown model name or a folder that is not a model.
        RuntimeError: Weights not reachable offline (the message says how to fix it).
    """
    from focuslens.model.loading import DTYPES, load_model

    path = Path(spec)
    if spec != "demo" and path.is_dir() and _is_focuslens_folder(path):
        from focuslens.demo import load_demo_model

        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        model = load_demo_model(path, device=device)
        return model if dtype == "float32" else model.to(DTYPES[dtype])
    return load_model(spec, dtype=dtype, device=device)


def _model_name(model: Any) -> str | None:
    return getattr(model.cfg, "model_name", None)


def stage_scores(
    model: Any,
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
    prompts = [p for p in prompts if p.relevant is not None]
    if not prompts:
        raise ValueError("no prompt has a relevant document; contextual scores need one")
    answered, skipped = with_responses(model, prompts, response)
    kw = {"query": query, "sink": sink, "batch_size": batch_size, "progress": progress}
    scores = contextual_scores(model, answered, **kw)
    run.folder.mkdir(parents=True, exist_ok=True)
    scores.save(run.path("scores"))
    heads = scores.top_heads(k)
    run.path("heads").write_text(json.dumps([list(h) for h in heads]))
    if all(p._parts is not None for p in answered):
        gold = contextual_scores(model, [p.gold_only() for p in answered], **kw)
        gold.save(run.path("scores_gold"))
    amap = attention_map_data(
        model, answered[example % len(answered)], heads, query=query, sink=sink
    )
    amap.save(run.path("attention"))
    settings = {
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
    model: Any, prompts: Sequence[LabeledPrompt], run: RunFolder, *, batch_size: int = 8
) -> dict[str, Any]:
    """Zero-ablation effect of each head on log p(answer) and its attribution-patching
    estimate; saved as ``effects.safetensors`` (one ``[n_layers, n_heads]`` table each)."""
    from safetensors.torch import save_file

    from focuslens.interventions.effects import ablation_effects, attribution_patching

    target = "response" if all(p.response for p in prompts) else "answer"
    kw = {"target": target, "batch_size": batch_size}
    tables = {
        "zero ablation": ablation_effects(model, prompts, **kw).values,
        "attribution patching": attribution_patching(model, prompts, **kw).values,
    }
    run.folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in tables.items()},
        str(run.path("effects")),
    )
    run.record("effects", {"n_prompts": len(prompts), "target": target, "mode": "zero"})
    return tables


def read_effects(run: RunFolder) -> dict[str, Any]:
    """The tables that :func:`stage_effects` saved."""
    from safetensors.torch import load_file

    tables = load_file(str(run.need("effects", "scores --effects")))
    order = [k for k in ("zero ablation", "attribution patching") if k in tables]
    return {k: tables[k] for k in [*order, *sorted(set(tables) - set(order))]}


def stage_learn(
    model: Any,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    *,
    heads: Sequence[tuple[int, int]] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    method: str = "learned",
    seed: int = 0,
    batch_size: int = 1,
    progress: bool = True,
) -> Any:
    """Learn focus directions for the layers of ``heads`` (default: ``heads.json``)."""
    from focuslens.directions.learn import learn_focus_directions

    heads = list(heads) if heads is not None else run.heads()
    prompts = [p for p in prompts if p.relevant is not None]
    directions = learn_focus_directions(
        model,
        prompts,
        heads=heads,
        epochs=epochs,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        method=method,
        progress=progress,
    )
    run.folder.mkdir(parents=True, exist_ok=True)
    directions.save(run.path("directions"))
    run.record(
        "learn",
        {
            "model": _model_name(model),
            "n_prompts": len(prompts),
            "epochs": epochs,
            "lr": lr,
            "method": method,
            "seed": seed,
            "heads": [list(h) for h in heads],
        },
    )
    return directions


def random_control(
    model: Any, heads: Sequence[tuple[int, int]], seed: int = 0
) -> list[tuple[int, int]]:
    """As many random heads as ``heads``, none of them in ``heads``, drawn uniformly over
    all layers (seeded): the paper's random-heads control
    (:func:`focuslens.heads.random_like`)."""
    from focuslens.heads import random_like

    return list(random_like(heads, model, seed=seed, disjoint=True))


def condition_name(kind: str, head_set: str = "", k: int | None = None, **params: Any) -> str:
    """A readable label: ``"baseline"``, ``"split-softmax top-2 tau=0.1"``, ``"steer random-2 alpha=auto"``."""
    if kind in ("baseline", "gold_only"):
        return kind.replace("_", " ")
    prefix = {"split_softmax": "split-softmax", "steering": "steer"}.get(kind, kind)
    values = " ".join(f"{name}={value}" for name, value in params.items() if value is not None)
    return f"{prefix} {head_set}-{k} {values}".strip()


def stage_eval(
    model: Any,
    prompts: Sequence[LabeledPrompt],
    run: RunFolder,
    *,
    kind: str = "baseline",
    intervention: Any = None,
    head_set: str = "",
    k: int | None = None,
    tau: float | None = None,
    alpha: float | str | None = None,
    measure_heads: Sequence[tuple[int, int]] | None = None,
    max_new_tokens: int | None = None,
    data: str = "test",
    progress: bool = True,
) -> EvalResult:
    """Evaluate one condition and store its rows in ``evals.jsonl``.

    ``kind="gold_only"`` evaluates the gold-only variant of each prompt; the other kinds
    evaluate the prompts as they are, under ``intervention``. ``data`` labels the prompt
    set (e.g. ``"test"``, ``"16 documents"``); rows of the same condition and data label
    from an earlier run are replaced.
    """
    if kind not in EVAL_KINDS:
        raise ValueError(f"kind must be one of {EVAL_KINDS}, got {kind!r}")
    if kind == "gold_only":
        prompts = [p.gold_only() for p in prompts if p.relevant is not None]
    result = evaluate(
        model,
        prompts,
        intervention=intervention,
        heads=measure_heads,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    name = condition_name(kind, head_set, k, tau=tau, alpha=alpha)
    frame = result.to_dataframe()
    extra = {
        "condition": name,
        "data": data,
        "kind": kind,
        "head_set": head_set,
        "k": k,
        "tau": tau,
        "alpha": alpha,
    }
    for col, value in reversed(list(extra.items())):
        frame.insert(0, col, [value] * len(frame))
    old = run.evals()
    if len(old):
        labels = old["data"] if "data" in old.columns else pd.Series("test", index=old.index)
        old = old[(old["condition"] != name) | (labels != data)]
    combined = pd.concat([old, frame], ignore_index=True) if len(old) else frame
    run.folder.mkdir(parents=True, exist_ok=True)
    combined.to_json(run.path("evals"), orient="records", lines=True)
    return result


__all__ = [
    "EVAL_KINDS",
    "RUN_FILES",
    "random_control",
    "read_effects",
    "RunFolder",
    "stage_effects",
    "stage_eval",
    "stage_learn",
    "stage_scores",
]

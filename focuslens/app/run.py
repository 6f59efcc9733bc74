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

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from focuslens.evaluation.accuracy import EvalResult, evaluate
from focuslens.evaluation.experiments import HeadExperiment, contextual_head_experiment
from focuslens.heads import ranked_from_json
from focuslens.interventions.oracles import SplitSoftmax
from focuslens.model.responses import with_responses
from focuslens.prompts.spans import LabeledPrompt
from focuslens.scores.attention import attention_map_data
from focuslens.scores.contextual import contextual_scores
from focuslens.scores.result import ContextualScores
from focuslens.typing import Model

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
        """The settings of each stage (``settings.json``), by stage name."""
        path = self.path("settings")
        if not path.is_file():
            return {}
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); was it edited by hand?") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
        return value

    @contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A temporary path to write result ``name`` to; it replaces the result only when
        the body succeeds (a write interrupted halfway never leaves a truncated file)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(name)
        tmp = final.with_name(f".{final.name}.tmp{final.suffix}")
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def heads_digest(self) -> str | None:
        """A short hash of ``heads.json`` as it is now (``None`` without one): each stage
        that reads the top heads records it, so that results of other heads are detected."""
        path = self.path("heads")
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None

    def check_consistent(self) -> None:
        """Refuse a folder whose later results were computed from other top heads than
        ``heads.json`` now names (the report must never mix them)."""
        current = self.heads_digest()
        stale = sorted(
            stage
            for stage, values in self.settings().items()
            if isinstance(values, dict) and values.get("heads_digest") not in (None, current)
        )
        if stale:
            raise ValueError(
                f"{self.folder}: the results of stage(s) {', '.join(stale)} were computed with "
                f"other top heads than {self.path('heads')} now names; rerun them "
                "(focuslens learn / eval / steer) or use a new run folder"
            )

    def later_results(self, stage: str) -> list[str]:
        """The files of this folder that stages after ``stage`` computed from its results."""
        later = {"scores": ("effects", "directions", "evals")}.get(stage, ())
        return [RUN_FILES[name] for name in later if self.has(name)]

    def record(self, stage: str, settings: dict[str, Any]) -> None:
        """Store a stage's settings in ``settings.json`` (replacing that stage's entry)."""
        merged = self.settings()
        merged[stage] = settings
        with self.writing("settings") as tmp:
            tmp.write_text(json.dumps(merged, indent=2, default=str))

    def heads(self) -> list[tuple[int, int]]:
        """The ranked heads of ``heads.json``."""
        return ranked_from_json(self.need("heads", "scores"))

    def evals(self) -> pd.DataFrame:
        """All evaluated examples, every data label (empty when nothing was evaluated)."""
        path = self.path("evals")
        if not path.is_file() or path.stat().st_size == 0:
            return pd.DataFrame(columns=["condition", "data", "kind", "correct"])
        try:
            return pd.read_json(path, lines=True, dtype=False)
        except ValueError as exc:
            raise ValueError(
                f"{path} is not valid JSON Lines ({exc}); was it edited by hand?"
            ) from None


def _digest(*parts: Any) -> str:
    """A short hash of a stage's inputs (prompts and settings), to tell a rerun on other
    inputs from the same one."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    inputs = _digest(
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
    with run.writing("effects") as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in tables.items()}, str(tmp))
    run.record("effects", {"n_prompts": len(prompts), "target": target, "mode": "zero"})
    return tables


def read_effects(run: RunFolder) -> dict[str, Any]:
    """The tables that :func:`stage_effects` saved."""
    from safetensors.torch import load_file

    tables = load_file(str(run.need("effects", "scores --effects")))
    order = [k for k in ("zero ablation", "attribution patching") if k in tables]
    return {k: tables[k] for k in [*order, *sorted(set(tables) - set(order))]}


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


def _none_if_nan(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


@dataclass(frozen=True)
class Condition:
    """One evaluated condition of a run: its typed columns in ``evals.jsonl``.

    ``kind`` is one of :data:`EVAL_KINDS`; interventions name the head set they act on
    (``"top"`` or ``"random"``) and its size ``k``, and their parameter (``tau`` for
    split-softmax, ``alpha`` for steering). :attr:`name` is a label for people; code reads
    the typed fields back with :meth:`from_row`, never the label.

    Example:
        >>> Condition("split_softmax", "top", 2, tau=0.1).name
        'split-softmax top-2 tau=0.1'
        >>> Condition.from_row(Condition("steering", "random", 2, alpha="auto").columns())
        Condition(kind='steering', head_set='random', k=2, tau=None, alpha='auto')
    """

    kind: str = "baseline"
    head_set: str = ""
    k: int | None = None
    tau: float | None = None
    alpha: float | str | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVAL_KINDS:
            raise ValueError(f"kind must be one of {EVAL_KINDS}, got {self.kind!r}")

    @property
    def name(self) -> str:
        """A readable label: ``"baseline"``, ``"split-softmax top-2 tau=0.1"``, ``"steer random-2 alpha=auto"``."""
        if self.kind in ("baseline", "gold_only"):
            return self.kind.replace("_", " ")
        prefix = {"split_softmax": "split-softmax", "steering": "steer"}[self.kind]
        params = {"tau": self.tau, "alpha": self.alpha}
        values = " ".join(f"{key}={value}" for key, value in params.items() if value is not None)
        return f"{prefix} {self.head_set}-{self.k} {values}".strip()

    def columns(self) -> dict[str, Any]:
        """The columns every row of this condition carries in ``evals.jsonl``."""
        return {
            "condition": self.name,
            "kind": self.kind,
            "head_set": self.head_set,
            "k": self.k,
            "tau": self.tau,
            "alpha": self.alpha,
        }

    @classmethod
    def from_row(cls, row: Any) -> Condition:
        """The condition of a row of ``evals.jsonl`` (a mapping or a DataFrame row)."""
        k, tau, alpha = (_none_if_nan(row.get(key)) for key in ("k", "tau", "alpha"))
        if alpha is not None and alpha != "auto":
            alpha = float(alpha)
        return cls(
            kind=str(row.get("kind", "baseline")),
            head_set=str(_none_if_nan(row.get("head_set")) or ""),
            k=None if k is None else int(k),
            tau=None if tau is None else float(tau),
            alpha=alpha,
        )

    def intervention(self, heads: Sequence[tuple[int, int]], directions: Any = None) -> Any:
        """The intervention of this condition on ``heads`` (``None`` for the references)."""
        if self.kind == "split_softmax":
            return SplitSoftmax(heads, self.tau)
        if self.kind == "steering":
            if directions is None:
                raise ValueError(f"condition {self.name!r} needs focus directions")
            return directions.steering(heads, self.alpha)
        return None


def record_rows(run: RunFolder, condition: Condition, frame: pd.DataFrame, data: str) -> None:
    """Store one condition's per-example rows in ``evals.jsonl``, replacing the rows of the
    same condition and data label from an earlier run."""
    frame = frame.copy()
    extra = {"data": data, **condition.columns()}
    extra = {"condition": extra.pop("condition"), **extra}
    for col, value in reversed(list(extra.items())):
        frame.insert(0, col, [value] * len(frame))
    old = run.evals()
    if len(old):
        labels = old["data"] if "data" in old.columns else pd.Series("test", index=old.index)
        old = old[(old["condition"] != condition.name) | (labels != data)]
    combined = pd.concat([old, frame], ignore_index=True) if len(old) else frame
    with run.writing("evals") as tmp:
        combined.to_json(tmp, orient="records", lines=True)
    if condition.kind in ("split_softmax", "steering"):  # read the top heads
        run.record("evals", {"heads_digest": run.heads_digest()})


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
    earlier run are replaced.
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
    record_rows(run, condition, result.to_dataframe(), data)
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


__all__ = [
    "EVAL_KINDS",
    "RUN_FILES",
    "read_effects",
    "RunFolder",
    "stage_effects",
    "stage_eval",
    "stage_experiment",
    "Condition",
    "record_rows",
    "stage_learn",
    "stage_scores",
]

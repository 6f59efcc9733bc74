"""The run folder: one schema for the files the stages of :mod:`focuslens.app.stages`
write and the report reads, and the typed :class:`Condition` of each evaluated row.

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
* ``settings.json``: the settings of each stage, by stage name, with what it was computed
  from (a hash of the scores' inputs; the hash of ``heads.json`` each later stage read).

Every file is written whole or not at all (:meth:`RunFolder.writing`), and a folder never
mixes results of different top heads (:meth:`RunFolder.check_consistent`).
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

from focuslens.heads import ranked_from_json
from focuslens.interventions.oracles import SplitSoftmax

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


def digest(*parts: Any) -> str:
    """A short hash of a stage's inputs (prompts and settings), to tell a rerun on other
    inputs from the same one."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


__all__ = [
    "RUN_FILES",
    "EVAL_KINDS",
    "RunFolder",
    "Condition",
    "digest",
    "record_rows",
]

"""The commands behind ``focuslens`` (:mod:`focuslens.app.cli` parses the command line): each
reads its inputs, checks them (a bad file, folder, device or option is a :class:`CommandError`
that names it) and runs the stage of :mod:`focuslens.app.stages`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from focuslens.app.run import RUN_FILES, RunFolder
from focuslens.typing import Model


class CommandError(Exception):
    """An error to print as ``focuslens: error: ...`` with exit status 1."""


# ---------------------------------------------------------------------- loading
def load_model(spec: str, *, dtype: str = "float32", device: str = "cpu") -> Any:
    """:func:`focuslens.app.stages.load_any_model`, its errors as :class:`CommandError`."""
    from focuslens.app.stages import load_any_model

    try:
        return load_any_model(spec, dtype=dtype, device=device)
    except ModuleNotFoundError as exc:
        raise CommandError(f"cannot load {spec!r}: {exc} (is focuslens fully installed?)") from None
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None


def _prompts(args: argparse.Namespace) -> list:
    from focuslens.tasks.files import read_prompts

    try:
        return read_prompts(args.data, args.format, limit=args.limit)
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None


def _heads(args: argparse.Namespace, run: RunFolder) -> list[tuple[int, int]]:
    from focuslens.heads import ranked_from_json

    try:
        heads = ranked_from_json(args.heads) if args.heads else run.heads()
    except (ValueError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    return heads[: args.k] if args.k else heads


def _pretrained_name(args: argparse.Namespace) -> str | None:
    """The model id of ``--directions pretrained[:ID]`` (``--model`` without ``:ID``), checked
    against the shipped release before the model loads; None for a directions file."""
    from focuslens.directions.pretrained import pretrained_name

    kind, _, name = (args.directions or "").partition(":")
    if kind != "pretrained":
        return None
    try:
        return pretrained_name(name or args.model)
    except ValueError as exc:
        hint = (
            "" if name else " (for a local model folder, write --directions pretrained:<model id>)"
        )
        raise CommandError(f"--directions {args.directions}: {exc}{hint}") from None


def _directions(args: argparse.Namespace, run: RunFolder, model: Model) -> Any:
    from focuslens.directions.core import FocusDirections

    name = _pretrained_name(args)
    if name is not None:
        try:
            return FocusDirections.pretrained(name, model)
        except ValueError as exc:
            raise CommandError(f"--directions {args.directions}: {exc}") from None
    path = Path(args.directions) if args.directions else run.path("directions")
    if not path.is_file():
        raise CommandError(f"{path} does not exist; run `focuslens learn --out {run.folder}` first")
    try:
        return FocusDirections.load(path, model)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# ---------------------------------------------------------------------- commands
def cmd_data(args: argparse.Namespace) -> None:
    from focuslens.tasks.files import write_prompts
    from focuslens.tasks.synthetic import synthetic_retrieval

    if Path(args.out).is_dir():
        raise CommandError(f"--out {args.out} is a folder; give the path of a .jsonl file")
    gold: Any = int(args.gold_position) if args.gold_position.isdigit() else args.gold_position
    try:
        prompts = synthetic_retrieval(
            args.n,
            n_documents=args.n_documents,
            gold_position=gold,
            absent=args.absent,
            seed=args.seed,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {len(prompts)} prompts to {write_prompts(prompts, args.out)}")


def cmd_scores(args: argparse.Namespace) -> None:
    from focuslens.app.stages import stage_scores

    model, prompts, run = _setup(args)
    try:
        scores = stage_scores(
            model,
            prompts,
            run,
            k=args.k,
            query=args.query,
            sink=args.sink,
            batch_size=args.batch_size,
            response=args.response,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.effects:
        from focuslens.app.stages import stage_effects

        try:
            stage_effects(model, prompts[: args.effects], run, batch_size=args.batch_size)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(f"wrote {run.path('effects')}")
    heads = run.heads()
    top = ", ".join(f"L{l}H{h} {float(scores.relevant[l, h]):.3f}" for l, h in heads)
    print(f"top {args.k} contextual heads: {top}")
    mean = ", ".join(
        f"{name} {sum(float(scores[name][l, h]) for l, h in heads) / len(heads):.3f}"
        for name in scores.names
        if name != "distractor_max"
    )
    print(f"their mean attention mass: {mean}")
    print(f"wrote {run.path('scores')} and {run.path('heads')}")


def cmd_learn(args: argparse.Namespace) -> None:
    from focuslens.app.stages import stage_learn

    model, prompts, run = _setup(args)
    heads = _heads(args, run)
    try:
        stage_learn(
            model,
            prompts,
            run,
            heads=heads,
            epochs=args.epochs,
            lr=args.lr,
            method=args.method,
            seed=args.seed,
            response=args.response,
            progress=not args.quiet,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {run.path('directions')}")


def _condition(model, prompts, run, args, condition=None, **kw) -> None:
    from focuslens.app.run import Condition
    from focuslens.app.stages import stage_eval

    condition = condition or Condition()
    try:
        result = stage_eval(
            model,
            prompts,
            run,
            condition,
            max_new_tokens=args.max_new_tokens,
            data=args.label or Path(args.data).stem,
            progress=not args.quiet,
            **kw,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    print(f"{condition.name}: accuracy {result.accuracy:.3f} (n={result.n})")


def cmd_eval(args: argparse.Namespace) -> None:
    from focuslens.app.run import Condition
    from focuslens.heads import random_control

    model, prompts, run = _setup(args)
    heads = _heads(args, run) if (args.split_softmax or args.heads or run.has("heads")) else None
    _condition(model, prompts, run, args, measure_heads=heads)
    if args.gold_only:
        _condition(model, prompts, run, args, Condition("gold_only"), measure_heads=heads)
    if args.split_softmax:
        sets = {"top": heads}
        if args.random_heads:
            sets["random"] = list(random_control(heads, model, seed=args.seed))
        for tau in args.split_softmax:
            for name, chosen in sets.items():
                condition = Condition("split_softmax", name, len(heads), tau=tau)
                try:
                    intervention = condition.intervention(chosen)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None
                _condition(
                    model,
                    prompts,
                    run,
                    args,
                    condition,
                    intervention=intervention,
                    measure_heads=heads,
                )
    print(f"wrote {run.path('evals')}")


def cmd_steer(args: argparse.Namespace) -> None:
    from focuslens.app.run import Condition
    from focuslens.directions.steering import DEFAULT_K
    from focuslens.heads import random_control

    pretrained = _pretrained_name(args)  # an unknown model id fails before the model loads
    model, prompts, run = _setup(args)
    directions = _directions(args, run, model)
    if pretrained and not args.heads and not run.path("heads").is_file():
        heads = directions.heads[: args.k or DEFAULT_K]  # the authors' ranking and default
    else:
        heads = _heads(args, run)
    sets = {"top": heads}
    if args.random_heads:
        sets["random"] = list(random_control(heads, model, seed=args.seed))
    for alpha in args.alpha:
        for name, chosen in sets.items():
            condition = Condition("steering", name, len(heads), alpha=alpha)
            _condition(
                model,
                prompts,
                run,
                args,
                condition,
                intervention=condition.intervention(chosen, directions),
                measure_heads=heads,
            )
    print(f"wrote {run.path('evals')}")


def cmd_report(args: argparse.Namespace) -> None:
    from focuslens.app.story import build_report, headline

    run = RunFolder(args.run)
    out = Path(args.out) if args.out else run.folder / "report.html"
    inputs = {run.path(name).resolve() for name in RUN_FILES}
    if out.resolve() in inputs:
        raise CommandError(f"--out {out} is one of the run's own files; give another path")
    if out.is_dir():
        raise CommandError(f"--out {out} is a folder; give the path of an .html file")
    try:
        report = build_report(args.run, title=args.title)
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        report.save(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    for key, value in headline(args.run).items():
        print(f"  {key}: {value}")
    print(f"report: {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from focuslens.app.demo import run_demo

    _check_run_folder(args.out)
    start = time.perf_counter()
    try:
        numbers = run_demo(
            args.out,
            quick=args.quick,
            model=args.model,
            seed=args.seed,
            progress=not args.quiet,
            threads=args.threads,
            echo=print,
            backend=args.backend,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise CommandError(str(exc)) from None
    for key, value in numbers.items():
        print(f"  {key}: {value}")
    print(f"report: {Path(args.out) / 'report.html'}  ({time.perf_counter() - start:.0f} s)")


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise CommandError(f"--device {device!r} is not a torch device ({exc})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {device}: CUDA is not available on this machine")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CommandError(f"--device {device}: MPS is not available on this machine")


def _check_run_folder(out: str) -> RunFolder:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise CommandError(f"--out {out} is a file; give a folder for the run's results")
    return RunFolder(path)


def _setup(args: argparse.Namespace) -> tuple[Any, list, RunFolder]:
    run = _check_run_folder(args.out)
    _check_device(args.device)
    prompts = _prompts(args)  # read the data first: a bad file fails before a slow load
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = load_model(args.model, dtype=args.dtype, device=args.device)
    return model, prompts, run


__all__ = [
    "CommandError",
    "cmd_data",
    "cmd_demo",
    "cmd_eval",
    "cmd_learn",
    "cmd_report",
    "cmd_scores",
    "cmd_steer",
    "load_model",
]

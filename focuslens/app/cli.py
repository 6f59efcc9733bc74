"""The focuslens command.

Quick start (offline, on the shipped demo model):

    focuslens demo                 # the whole story, about 80 s on 2 idle cores
    open focuslens-out/report.html

Step by step, on any model TransformerLens can load (a name whose weights are in the
local Hugging Face cache, a local model folder, or "demo"), through one run folder:

    focuslens data synthetic --n 200 --n-documents 48 --seed 0 --out train.jsonl
    focuslens data synthetic --n 100 --n-documents 48 --seed 1 --out test.jsonl
    focuslens scores --model demo --data train.jsonl --out run/ --k 2
    focuslens learn  --model demo --data train.jsonl --out run/
    focuslens eval   --model demo --data test.jsonl --out run/ --gold-only --split-softmax 0.1 --random-heads
    focuslens steer  --model demo --data test.jsonl --out run/ --alpha -0.5 0.5 1 auto --random-heads
    focuslens report run/

Prompt files are JSON Lines: the "documents" form that `focuslens data` writes, the
"labeled" form, or HELMET / lost-in-the-middle QA records (focuslens.tasks.files
describes them). Each stage writes its results into the run folder (--out), where the
next one reads them: scores.safetensors, heads.json, attention.safetensors,
effects.safetensors, directions.safetensors, evals.jsonl, settings.json; `focuslens
report` turns the folder into one self-contained HTML page. Errors are printed as one
line naming the problem, with exit status 1 (2 for a bad command line).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import NoReturn

from focuslens.app.commands import (
    CommandError,
    cmd_data,
    cmd_demo,
    cmd_eval,
    cmd_learn,
    cmd_report,
    cmd_scores,
    cmd_steer,
)


# ---------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _alpha(text: str) -> float | str:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"alpha must be a number or 'auto', got {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"alpha must be a finite number, got {text!r}")
    return value


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument(
        "--model",
        default="demo",
        help="'demo', a TransformerLens model name (weights in the local Hugging "
        "Face cache when offline) or a local model folder (default: demo)",
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    g.add_argument("--data", required=True, help="prompts, JSON Lines (see `focuslens --help`)")
    g.add_argument(
        "--format",
        default="auto",
        choices=["auto", "documents", "labeled", "helmet", "lost_in_the_middle"],
    )
    g.add_argument(
        "--limit", type=_positive_int, default=None, help="read at most this many prompts"
    )
    g.add_argument("--out", required=True, help="run folder for the results")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")


def _heads_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heads", help="JSON [[layer, head], ...] (default: OUT/heads.json)")
    p.add_argument("--k", type=int, default=None, help="use the first k heads of the list")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), pointing to the help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="focuslens", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole story on the demo model, then a report")
    p.add_argument("--out", default="focuslens-out", help="run folder (default: focuslens-out)")
    p.add_argument("--quick", action="store_true", help="fewer prompts and settings (< 1 min)")
    p.add_argument("--model", default="demo", help="model (default: the shipped demo model)")
    p.add_argument(
        "--backend",
        choices=["hooked", "bridge"],
        default=None,
        help="the demo model as a HookedTransformer or a TransformerBridge (default: hooked "
        "where transformer-lens has it, i.e. 3.x; bridge under 4.x)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for the tiny demo model)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="write synthetic retrieval prompts for the demo model")
    p.add_argument("task", choices=["synthetic"])
    p.add_argument("--n", type=int, required=True, help="number of prompts")
    p.add_argument("--n-documents", type=int, required=True)
    p.add_argument(
        "--gold-position", default="random", help="first, middle, last, random or an index"
    )
    p.add_argument("--absent", type=float, default=0.0, help="fraction of absent-key queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("scores", help="contextual scores and the top-k contextual heads")
    _model_args(p)
    p.add_argument("--k", type=int, default=2, help="number of contextual heads (default 2)")
    p.add_argument("--query", default="response", choices=["response", "predict", "last"])
    p.add_argument("--sink", type=int, default=2, help="leading positions counted as the sink")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--response",
        default="auto",
        choices=["auto", "given", "generated"],
        help="response rows: the prompts' own, or generated greedily",
    )
    p.add_argument(
        "--effects",
        type=int,
        default=0,
        metavar="N",
        help="also ablate each head, and patch it from the gold-only prompt, on the first N prompts (0: no)",
    )
    p.set_defaults(func=cmd_scores)

    p = sub.add_parser("learn", help="learn focus directions for the contextual heads")
    _model_args(p)
    _heads_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method", default="learned", choices=["learned", "closed_form"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--response",
        default="auto",
        choices=["auto", "gold_only", "given"],
        help="teacher-forced responses: the gold-only prompts' greedy answers (the "
        "authors' recipe), the prompts' own, or auto: gold_only when the prompts were "
        "built from documents, else given",
    )
    p.set_defaults(func=cmd_learn)

    for name, helptext in (
        ("eval", "accuracy: baseline, gold-only, split-softmax"),
        ("steer", "accuracy while steering with focus directions"),
    ):
        p = sub.add_parser(name, help=helptext)
        _model_args(p)
        _heads_args(p)
        p.add_argument("--label", help="name of this prompt set in the report (default: file stem)")
        p.add_argument("--max-new-tokens", type=int, default=None)
        p.add_argument(
            "--random-heads",
            action="store_true",
            help="also run the same number of random heads (the control)",
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the random heads")
        if name == "eval":
            p.add_argument("--gold-only", action="store_true", help="also the gold-only prompts")
            p.add_argument(
                "--split-softmax",
                type=float,
                nargs="+",
                metavar="TAU",
                help="split-softmax on the heads with these tau",
            )
            p.set_defaults(func=cmd_eval)
        else:
            p.add_argument(
                "--directions",
                help="a FocusDirections file (default: OUT/directions.safetensors), or "
                "'pretrained': the authors' released directions shipped with focuslens for "
                "--model (a Hugging Face id; 'pretrained:<id>' names it), which steer the "
                "release's top heads (--k, default 20) unless --heads or OUT/heads.json "
                "name others",
            )
            p.add_argument(
                "--alpha",
                type=_alpha,
                nargs="+",
                required=True,
                help="steering strengths, numbers or 'auto'",
            )
            p.set_defaults(func=cmd_steer)

    p = sub.add_parser("report", help="the HTML report of a run folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="HTML file (default: RUN/report.html)")
    p.add_argument("--title", default="focuslens report")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 bad usage)."""
    import torch

    args = build_parser().parse_args(argv)
    threads = torch.get_num_threads()
    try:
        args.func(args)
    except (CommandError, ValueError, OSError) as exc:
        # Expected failures (bad input, a file that cannot be read or written): one line.
        if args.debug:
            raise
        print(f"focuslens: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("focuslens: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(
            threads
        )  # --threads lasts one command (main is also called in-process)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CommandError", "build_parser", "main"]

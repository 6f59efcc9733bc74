"""The ``focuslens`` command: end to end through files, exit codes and messages."""

from __future__ import annotations

import json

import pytest
import torch
from _oracles import make_prompts
from _tiny import demo_model_missing, save_model_folder, tiny_model

from focuslens import ContextualScores, contextual_scores
from focuslens.app.cli import CommandError, main
from focuslens.app.run import RunFolder
from focuslens.tasks.files import read_prompts, write_prompts


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model saved as a model folder, and train/test prompt files."""
    root = tmp_path_factory.mktemp("cli")
    model = tiny_model("gqa")
    save_model_folder(model, root / "model")
    write_prompts(make_prompts(4), root / "train.jsonl")
    write_prompts(make_prompts(4, seed=1), root / "test.jsonl")
    return root, model


# ---------------------------------------------------------------------- help and usage
def test_help_names_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "data", "scores", "learn", "eval", "steer", "report"):
        assert command in out
    with pytest.raises(SystemExit) as exc:
        main(["steer", "--help"])
    assert "--alpha" in capsys.readouterr().out


def test_bad_alpha_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["steer", "--data", "x.jsonl", "--out", str(tmp_path), "--alpha", "strong"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "alpha must be a number or 'auto', got 'strong'" in err
    assert len(err.strip().splitlines()) == 1 and "see `focuslens steer --help`" in err
    for text in ("nan", "inf", "1e400"):  # 1e400 overflows to inf
        with pytest.raises(SystemExit) as exc:
            main(["steer", "--data", "x.jsonl", "--out", str(tmp_path), "--alpha", "1", text])
        assert exc.value.code == 2
        assert f"alpha must be a finite number, got '{text}'" in capsys.readouterr().err


# ---------------------------------------------------------------------- bad inputs
def test_malformed_data_file_names_the_line(capsys, tmp_path, files):
    root, _ = files
    good = (root / "train.jsonl").read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good[0] + "\n" + good[1][:-5] + "\n")
    code, _, err = run(capsys, "scores", "--data", str(bad), "--out", str(tmp_path / "r"))
    assert code == 1
    assert err.startswith("focuslens: error: ") and f"{bad}, line 2: not valid JSON" in err
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "w1 w2"}\n')
    code, _, err = run(capsys, "scores", "--data", str(odd), "--out", str(tmp_path / "r"))
    assert code == 1 and f"{odd}, line 1: unknown prompt record with keys ['prompt']" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good[0] + "\n" + '{"bodies": ["w1"], "answers": ["x"]}\n')
    code, _, err = run(capsys, "scores", "--data", str(broken), "--out", str(tmp_path / "r"))
    assert (
        code == 1 and "line 2: not a valid 'documents' prompt: missing fields ['prefixes']" in err
    )
    code, _, err = run(capsys, "scores", "--data", str(tmp_path / "nope.jsonl"), "--out", "r")
    assert code == 1 and "nope.jsonl does not exist" in err


def test_unknown_model_and_unreachable_weights(capsys, tmp_path, files, monkeypatch):
    root, _ = files
    data = str(root / "train.jsonl")
    code, _, err = run(
        capsys, "scores", "--model", "no-such-model-xyz", "--data", data, "--out", str(tmp_path)
    )
    assert code == 1 and "unknown model 'no-such-model-xyz'" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    code, _, err = run(capsys, "scores", "--model", "gpt2", "--data", data, "--out", str(tmp_path))
    if code == 0:
        pytest.skip("gpt2's weights are in this machine's Hugging Face cache")
    assert code == 1 and "not reachable" in err and "huggingface-cli download" in err


def test_later_stages_say_which_command_comes_first(capsys, tmp_path, files):
    root, _ = files
    common = ["--model", str(root / "model"), "--data", str(root / "test.jsonl"), "--quiet"]
    code, _, err = run(capsys, "learn", *common, "--out", str(tmp_path / "empty"))
    assert code == 1 and "heads.json does not exist; run `focuslens scores` first" in err
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "heads.json").write_text("[[1, 0]]")
    code, _, err = run(capsys, "steer", *common, "--out", str(tmp_path / "h"), "--alpha", "1")
    assert code == 1 and "directions.safetensors does not exist; run `focuslens learn" in err
    code, _, err = run(capsys, "report", str(tmp_path / "missing"))
    assert code == 1 and "run folder" in err and "does not exist" in err


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_scores_learn_eval_steer_report_through_files(capsys, tmp_path, files):
    root, model = files
    out = tmp_path / "run"
    common = ["--model", str(root / "model"), "--out", str(out), "--quiet", "--threads", "1"]
    train, test = str(root / "train.jsonl"), str(root / "test.jsonl")
    code, stdout, _ = run(capsys, "scores", *common, "--data", train, "--k", "2", "--effects", "2")
    assert code == 0 and "top 2 contextual heads: L" in stdout
    # The scores file holds exactly what contextual_scores computes on the same prompts.
    expected = contextual_scores(model, read_prompts(train))
    saved = ContextualScores.load(out / "scores.safetensors")
    torch.testing.assert_close(saved.relevant, expected.relevant, atol=1e-6, rtol=0)
    assert json.loads((out / "heads.json").read_text()) == [list(h) for h in expected.top_heads(2)]
    # The named spans of the prompts (from_documents names two) are scored and printed.
    heads = expected.top_heads(2)
    question = sum(float(expected.mass("question")[h]) for h in heads) / 2
    assert saved.span_names == ("instruction", "question")
    assert f"question {question:.3f}" in stdout
    assert (out / "effects.safetensors").is_file() and (out / "attention.safetensors").is_file()
    # The patching table is what patch_heads gives on those prompts, with its interval.
    from safetensors.torch import load_file

    from focuslens import patch_heads

    saved_effects = load_file(str(out / "effects.safetensors"))
    patched = patch_heads(model, read_prompts(train)[:2], target="response")
    torch.testing.assert_close(saved_effects["gold-only patching"], patched.values)
    low, high = patched.ci(0.95)
    torch.testing.assert_close(saved_effects["gold-only patching low"], low)
    torch.testing.assert_close(saved_effects["gold-only patching high"], high)

    code, stdout, _ = run(capsys, "learn", *common, "--data", train, "--epochs", "1")
    assert code == 0 and (out / "directions.safetensors").is_file()
    code, stdout, _ = run(
        capsys,
        "eval",
        *common,
        "--data",
        test,
        "--gold-only",
        "--split-softmax",
        "0.1",
        "--random-heads",
        "--max-new-tokens",
        "2",
    )
    assert code == 0
    names = [line.split(":")[0] for line in stdout.splitlines() if "accuracy" in line]
    assert names == [
        "baseline",
        "gold only",
        "split-softmax top-2 tau=0.1",
        "split-softmax random-2 tau=0.1",
    ]
    code, stdout, _ = run(
        capsys, "steer", *common, "--data", test, "--alpha", "0.5", "--max-new-tokens", "2"
    )
    assert code == 0 and "steer top-2 alpha=0.5: accuracy" in stdout

    evals = RunFolder(out).evals()
    assert sorted(set(evals.condition)) == sorted([*names, "steer top-2 alpha=0.5"])
    assert set(evals.data) == {"test"} and (evals.groupby("condition").size() == 4).all()
    from focuslens.evaluation.accuracy import evaluate

    direct = evaluate(model, read_prompts(test), max_new_tokens=2, progress=False)
    baseline = evals[evals.condition == "baseline"]
    assert baseline.prediction.tolist() == direct.to_dataframe().prediction.tolist()

    code, stdout, _ = run(capsys, "report", str(out))
    assert code == 0 and f"report: {out / 'report.html'}" in stdout
    html = (out / "report.html").read_text()
    for title in (
        "Contextual heads",
        "Do the contextual heads matter? Ablation and patching",
        "Is attention the lever? Split-softmax",
        "Focus directions",
        "Steering with focus directions",
    ):
        assert f"<h2>{title}</h2>" in html


@pytest.mark.slow
def test_demo_model_end_to_end_through_files(capsys, tmp_path):
    missing = demo_model_missing()
    if missing:
        pytest.skip(f"the demo model is not available ({missing})")
    from focuslens.demo import DISTRACTING_DOCS

    train, test, out = tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path / "run"
    docs = str(DISTRACTING_DOCS)
    assert (
        run(capsys, "data", "synthetic", "--n", "8", "--n-documents", docs, "--out", str(train))[0]
        == 0
    )
    assert (
        run(
            capsys,
            "data",
            "synthetic",
            "--n",
            "8",
            "--n-documents",
            docs,
            "--seed",
            "1",
            "--out",
            str(test),
        )[0]
        == 0
    )
    common = ["--out", str(out), "--quiet", "--threads", "1"]
    code, stdout, _ = run(capsys, "scores", *common, "--data", str(train))
    assert code == 0 and "top 2 contextual heads" in stdout
    assert run(capsys, "learn", *common, "--data", str(train), "--epochs", "1")[0] == 0
    code, stdout, _ = run(capsys, "eval", *common, "--data", str(test), "--max-new-tokens", "4")
    assert code == 0 and "baseline: accuracy" in stdout
    code, stdout, _ = run(
        capsys, "steer", *common, "--data", str(test), "--alpha", "1", "--max-new-tokens", "4"
    )
    assert code == 0
    code, stdout, _ = run(capsys, "report", str(out))
    assert code == 0 and (out / "report.html").is_file()
    evals = RunFolder(out).evals()
    assert set(evals.condition) == {"baseline", "steer top-2 alpha=1.0"} and len(evals) == 16


# ---------------------------------------------------------------------- prompt files
def test_prompt_files_round_trip_and_keep_variants(tmp_path):
    from focuslens import LabeledPrompt

    prompts = make_prompts(3)
    path = write_prompts(prompts, tmp_path / "p.jsonl")
    back = read_prompts(path)
    assert back == prompts  # text, spans, answers, response
    assert [b.gold_only().text for b in back] == [p.gold_only().text for p in prompts]
    assert back[1].distractors_only() == prompts[1].distractors_only()
    plain = LabeledPrompt("w1 w2 w3 w4", (3, 5), [(6, 11)], ["w2"], response="w2", meta={"a": 1})
    write_prompts([plain], tmp_path / "plain.jsonl")
    (again,) = read_prompts(tmp_path / "plain.jsonl")
    assert again == plain and again.meta == {"a": 1}
    assert len(read_prompts(path, limit=2)) == 2
    with pytest.raises(ValueError, match="format must be one of"):
        read_prompts(path, "csv")


def test_qa_records_are_read_by_the_helmet_loader(tmp_path):
    record = {
        "question": "w7",
        "answers": ["w3"],
        "ctxs": [
            {"title": "w1", "text": "w2 w3", "has_answer": True},
            {"title": "w1", "text": "w4 w5", "has_answer": False},
        ],
    }
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (prompt,) = read_prompts(path)
    assert prompt.text[slice(*prompt.relevant)].endswith("w2 w3") and len(prompt.distractors) == 1


# ------------------------------------------------------------- failures: one line, no loss
def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("focuslens: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_expected_failures_are_one_line_errors(capsys, tmp_path, files):
    root, _ = files
    model, train = str(root / "model"), str(root / "train.jsonl")
    common = ["--model", model, "--quiet", "--threads", "1"]
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    code, _, err = run(capsys, "scores", *common, "--data", train, "--out", str(afile))
    _one_line_error(code, err, f"--out {afile} is a file")
    code, _, err = run(
        capsys, "data", "synthetic", "--n", "2", "--n-documents", "3", "--out", str(tmp_path)
    )
    _one_line_error(code, err, f"--out {tmp_path} is a folder")
    code, _, err = run(
        capsys, "scores", *common, "--data", str(tmp_path), "--out", str(tmp_path / "r")
    )
    _one_line_error(code, err, f"prompt file {tmp_path} is a folder")
    if not torch.cuda.is_available():
        code, _, err = run(
            capsys,
            "scores",
            *common,
            "--device",
            "cuda",
            "--data",
            train,
            "--out",
            str(tmp_path / "r"),
        )
        _one_line_error(code, err, "--device cuda: CUDA is not available")
    bad = tmp_path / "bad.jsonl"
    good = (root / "train.jsonl").read_bytes().splitlines(keepends=True)
    bad.write_bytes(good[0] + good[1] + b'{"text": "\xff\xfe"}\n' + good[2])
    code, _, err = run(capsys, "scores", *common, "--data", str(bad), "--out", str(tmp_path / "r"))
    _one_line_error(code, err, f"{bad}, line 3: not UTF-8 text")
    with pytest.raises(SystemExit) as exc:
        main(["scores", *common, "--data", train, "--out", str(tmp_path / "r"), "--limit", "-3"])
    assert exc.value.code == 2
    assert "expected a positive whole number, got '-3'" in capsys.readouterr().err
    # --debug shows the traceback instead
    with pytest.raises(CommandError, match="is a folder"):
        main(["--debug", "scores", *common, "--data", str(tmp_path), "--out", str(tmp_path / "r")])


def test_run_folders_cannot_lie(capsys, tmp_path, files):
    """A rerun on other inputs never leaves later results stale; a bad --k writes nothing;
    the report never overwrites an input; corrupt run files are named."""
    root, _ = files
    out = tmp_path / "run"
    common = ["--model", str(root / "model"), "--out", str(out), "--quiet", "--threads", "1"]
    train, test = str(root / "train.jsonl"), str(root / "test.jsonl")
    assert run(capsys, "scores", *common, "--data", train, "--k", "2")[0] == 0
    code, _, err = run(
        capsys, "eval", *common, "--data", test, "--max-new-tokens", "2", "--split-softmax", "0.5"
    )
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Same inputs again: allowed, nothing changes meaning.
    assert run(capsys, "scores", *common, "--data", train, "--k", "2")[0] == 0
    # Other data or another k: refused while evals.jsonl holds results of the old heads.
    for args in (["--data", test, "--k", "2"], ["--data", train, "--k", "3"]):
        code, _, err = run(capsys, "scores", *common, *args)
        _one_line_error(
            code, err, "holds results computed from other contextual scores", "evals.jsonl"
        )
    code, _, err = run(capsys, "scores", *common, "--data", train, "--k", "100")
    _one_line_error(code, err, "k must be an int between 1 and 8")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["heads.json"] == before["heads.json"]
    assert after["scores.safetensors"] == before["scores.safetensors"]
    assert after["evals.jsonl"] == before["evals.jsonl"]
    assert not [name for name in after if name.endswith(".tmp") or name.startswith(".")]
    # The report refuses to write onto an input.
    code, _, err = run(capsys, "report", str(out), "--out", str(out / "heads.json"))
    _one_line_error(code, err, "is one of the run's own files")
    assert (out / "heads.json").read_bytes() == before["heads.json"]
    # heads.json edited behind the run's back: the report refuses to mix the results.
    (out / "heads.json").write_text(json.dumps(json.loads(before["heads.json"])[::-1]))
    code, _, err = run(capsys, "report", str(out))
    _one_line_error(code, err, "stage(s) evals were computed with other top heads")
    (out / "heads.json").write_bytes(before["heads.json"])
    # Corrupt run files: the error names the file.
    (out / "settings.json").write_text("{not json")
    code, _, err = run(capsys, "report", str(out))
    _one_line_error(code, err, f"{out / 'settings.json'} is not valid JSON")
    (out / "settings.json").write_bytes(before["settings.json"])
    (out / "evals.jsonl").write_text('{"condition": "baseline", \n')
    code, _, err = run(capsys, "report", str(out))
    _one_line_error(code, err, f"{out / 'evals.jsonl'} is not valid JSON Lines")


def test_split_softmax_zero_is_a_one_line_error(capsys, tmp_path, files):
    root, _ = files
    out = tmp_path / "run"
    common = ["--model", str(root / "model"), "--out", str(out), "--quiet", "--threads", "1"]
    assert run(capsys, "scores", *common, "--data", str(root / "train.jsonl"))[0] == 0
    code, _, err = run(
        capsys, "eval", *common, "--data", str(root / "test.jsonl"), "--split-softmax", "0",
        "--max-new-tokens", "2",
    )  # fmt: skip
    _one_line_error(code, err, "tau must be a positive finite number, got 0")


def test_learn_from_a_labeled_file_end_to_end(capsys, tmp_path, files):
    """Prompts with spans but no document layout: learning uses their own responses, records
    no auto target (with a note), and `steer --alpha auto` says what is missing."""
    from focuslens import LabeledPrompt
    from focuslens.directions import FocusDirections

    root, _ = files
    labeled = [
        LabeledPrompt(p.text, p.relevant, p.distractors, p.answers, response=p.response)
        for p in make_prompts(3)
    ]
    data = tmp_path / "labeled.jsonl"
    write_prompts(labeled, data)
    assert json.loads(data.read_text().splitlines()[0]).keys() >= {"text", "relevant"}
    out = tmp_path / "run"
    common = ["--model", str(root / "model"), "--out", str(out), "--quiet", "--threads", "1"]
    assert run(capsys, "scores", *common, "--data", str(data))[0] == 0
    code, _, err = run(capsys, "learn", *common, "--data", str(data), "--epochs", "1")
    assert code == 0, err
    fd = FocusDirections.load(out / "directions.safetensors")
    assert fd.training["auto"] is None and "no target for alpha='auto'" in fd.training["auto_note"]
    assert RunFolder(out).settings()["learn"]["response"] == "given"
    code, _, err = run(
        capsys, "steer", *common, "--data", str(data), "--alpha", "auto", "--max-new-tokens", "2"
    )
    _one_line_error(code, err, "alpha='auto' needs a target")


# ---------------------------------------------------------------------- released directions
def test_steer_with_the_pretrained_directions(capsys, tmp_path, monkeypatch):
    """`steer --directions pretrained:<id>` steers the release's top --k heads on a model of
    the released model's shape; an unknown id fails before the model loads."""
    from _tiny import word_tokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from focuslens.app.run import Condition
    from focuslens.directions.pretrained import pretrained_heads

    tok = word_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=28, d_model=16, n_heads=24, n_key_value_heads=8, d_head=128, d_mlp=16,
        d_vocab=len(tok), n_ctx=256, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", rotary_dim=128, default_prepend_bos=True, seed=0,
        model_name="llama-3.2-3b-shaped",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tok)
    save_model_folder(model, tmp_path / "model")
    write_prompts(make_prompts(2, seed=1), tmp_path / "test.jsonl")
    common = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "test.jsonl")]
    common += ["--quiet", "--threads", "1", "--max-new-tokens", "2", "--alpha", "0.3"]
    out = tmp_path / "run"
    code, _, err = run(capsys, "steer", *common, "--out", str(out), "--directions", "pretrained")
    assert code == 1 and "no released focus directions for" in err and "pretrained:<model" in err
    assert not out.exists()  # refused before anything was loaded or written
    steered = []
    original = Condition.intervention
    monkeypatch.setattr(
        Condition,
        "intervention",
        lambda self, heads, directions=None: (
            steered.append(list(heads)) or original(self, heads, directions)
        ),
    )
    name = "pretrained:meta-llama/Llama-3.2-3B-Instruct"
    code, stdout, err = run(
        capsys, "steer", *common, "--out", str(out), "--directions", name, "--k", "3"
    )
    assert code == 0, err
    assert "steer top-3 alpha=0.3: accuracy" in stdout
    evals = RunFolder(out).evals()
    assert set(evals.condition) == {"steer top-3 alpha=0.3"} and len(evals) == 2
    assert steered == [pretrained_heads("meta-llama/Llama-3.2-3B-Instruct")[:3]]
    # A model of another shape: both shapes named.
    code, _, err = run(
        capsys, "steer", *common, "--out", str(out), "--directions",
        "pretrained:Qwen/Qwen2.5-7B-Instruct",
    )  # fmt: skip
    assert code == 1 and "28 layers x 28 heads" in err and "28 layers x 24 heads" in err

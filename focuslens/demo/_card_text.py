"""The prose of ``MODEL_CARD.md``; the numbers come from :mod:`focuslens.demo.card`."""

from __future__ import annotations

from typing import Any

HISTORY = """\
* **Start (the issue's probe).** Documents `[DOC k v]`, queries `[Q k` -> `v`, four
  queries per sequence, a loss on every answer, 25% absent keys, 2-layer
  attention-only rotary model (d_model 128, 4 heads of 32), lr 2e-3 with warm-up and
  cosine decay, batch 64, 2-12 documents. This card's recipe keeps all of that.
* **Two-word keys and values.** Keys became two words so that distractors can share
  part of the gold key (the `similar` option), and values two words so that the
  teacher-forced response has a row (the first value word) that still has to read the
  gold document. Training sequences mix in keys that share a word with another key
  and absent keys that share a word with a present one, so the model must match whole
  keys.
* **TransformerLens forward too slow to train on shared CPUs.** One step of
  `HookedTransformer.forward` (batch 64, ~70 tokens) took 1-4 s on this machine while
  other jobs ran. `_fast.py` computes the same function from the same parameters with
  fused attention and unembeds only the target positions; it agrees with
  `model(tokens)` to ~1e-5 (checked in `train.py` and in the tests). Two threads were
  4x slower than one under contention (thread spin), so training uses one thread.
* **Run 1 (64 value words, repeats allowed).** Learned after a plateau at loss ~1.5
  (steps 300-900, the model copying some value of the context) and a drop at steps
  900-1300. Accuracy 0.98 at 4 documents but only 0.935 at 8-12: 90% of the errors
  were a wrong *second* value word. The model finds the second word by induction
  (after the first value word, copy what followed it earlier), which fails when the
  first word also occurs in another document (about 1 prompt in 5 at 8 documents).
  Present-key accuracy fell steeply past the training range: 0.81 at 16, 0.38 at 24,
  0.06 at 32, 0 at 48, almost always answering `NONE` (under-commitment).
* **Run 2 (512 value words, none repeated in a prompt).** Meant to remove those
  repeats; the model never left the plateau (loss 1.9 after 2,500 steps, 28 min under
  heavy CPU contention). Copying one of 512 words through 32-dimensional heads is much
  harder to learn than one of 64.
* **Run 3 (this model).** Back to 64 value words, drawn without repetition while a
  prompt has at most 32 documents (always, in training); the same recipe otherwise.
  Learned by step ~1,300 (plateau until ~500), final loss 0.002; accuracy 1.00 over the
  training range. Present-key accuracy still falls steeply past it (0.995 at 16, ~0.6
  at 24, ~0.15 at 32), so `DISTRACTING_DOCS` is 24 rather than the probe's 48.
* **What the distraction is.** At 24 documents a gold document in the middle is still
  found (accuracy ~1.0); one at the start, ~145 tokens before the query (farther than
  any training sequence), is mostly answered `NONE`, and one at the end is often
  answered with another document's value. The contextual heads' mass on the relevant
  document drops and moves to distractors (tables above). Part of the effect is
  distance beyond the training lengths, part is dilution over more documents; both
  are what a focus direction has to counter.
"""


def _fmt(x: Any, spec: str = ".2f") -> str:
    return format(x, spec) if isinstance(x, float) else str(x)


def render_card(
    *,
    config: dict[str, Any],
    training: dict[str, Any],
    measurements: dict[str, Any],
    accuracy_md: str,
    heads_md: str,
    heads_predict_md: str,
    heads_4_md: str,
    by_position_md: str,
) -> str:
    """Fill the card template."""
    r = training["recipe"]
    m = measurements
    dd = m["settings"]["distracting_docs"]
    rows = {row["n_documents"]: row for row in m["accuracy"]}
    heads = m["heads"]["response"]
    top = heads[:2]
    total_rel = sum(h["relevant"] for h in heads)
    top_share = sum(h["relevant"] for h in top) / total_rel if total_rel else float("nan")
    top_names = ", ".join(f"L{h['layer']}H{h['head']}" for h in top)
    arch = ", ".join(
        f"{k}={config[k]}"
        for k in (
            "n_layers",
            "d_model",
            "n_heads",
            "d_head",
            "n_key_value_heads",
            "attn_only",
            "normalization_type",
            "positional_embedding_type",
            "rotary_base",
            "n_ctx",
            "d_vocab",
            "default_prepend_bos",
        )
    )
    cpu = training.get("train_cpu_seconds")
    cpu_text = f"{cpu / 60:.1f} min of CPU time" if cpu else "CPU time not recorded"
    return f"""# focuslens demo model

A tiny transformer in which the paper's phenomenon is real: it retrieves the value of a
queried key from a list of documents, is accurate on as many documents as it was trained
on, and is distracted by many more; a few attention heads carry its attention to the
relevant document. It ships with focuslens so that every tutorial and test runs offline
on two CPU cores.

```python
import focuslens
from focuslens.demo import DISTRACTING_DOCS  # {dd}
model = focuslens.load_demo_model()          # offline, about a second
prompts = focuslens.tasks.synthetic_retrieval(200, n_documents=DISTRACTING_DOCS)
focuslens.evaluate(model, prompts).accuracy
```

## Task

`focuslens.tasks.synthetic_retrieval`: documents `[DOC k12 k40 v7 v51 ]` (a two-word key
and a two-word value), then a query `[Q k12 k40`; the model answers `v7 v51 <eos>`, or
`NONE <eos>` when no document has the key. Keys and values are distinct within a
prompt, and up to 32 documents no value word repeats. Word-level vocabulary of {config["d_vocab"]}
tokens (64 key words, 64 value words, `[DOC`, `]`, `[Q`, `NONE`, `<bos>`, `<eos>`,
`<pad>`, `<unk>`); a prompt of N documents has `1 + 6 N + 3` tokens with BOS.

* **Spans**: each document's span is `k k v v ]`, its closing delimiter included, since
  the model gathers a document's content on that token. `[DOC` lies outside, like
  `Document [i]` in the paper.
* **Stop token**: `<eos>` (`model.tokenizer.eos_token`); greedy generation stops on it.
  `prompt.response` is the answer without it.
* **Metric**: exact match of the answer (`prompt.meta["metric"] == "exact"`).

## Architecture

`HookedTransformer` from `HookedTransformerConfig({arch})`: attention only, rotary
(GPT-NeoX layout), RMSNorm, grouped-query attention (4 query heads share 2 key/value
heads: query head h reads KV head h // 2), BOS prepended so an attention sink can form.
Weights: `model.safetensors` (parameters only, float32); tokenizer: `tokenizer.json`
(Hugging Face `tokenizers`, word level, whitespace split, exact offsets), wrapped in
`PreTrainedTokenizerFast` with bos `<bos>`, eos `<eos>`, pad `<pad>`.

## Training

`python -m focuslens.demo.train --out focuslens/demo` (deterministic: seeded Python RNG
for the data, `torch.manual_seed`, deterministic algorithms, {r["threads"]} thread).

* Data: each sequence holds {r["min_docs"]}-{r["max_docs"]} documents (the same number in a
  batch), then {r["queries"]} queries each followed by its answer and `<eos>`; {r["absent"]:.0%} of
  queries have an absent key (half of those share one word with a present key); a key
  shares one word with an earlier key with a probability drawn per sequence from
  [0, {r["max_share"]}]. Loss: cross-entropy on the answer tokens and their `<eos>` only.
* Optimiser: AdamW, lr {r["lr"]}, {r["warmup"]} warm-up steps then cosine decay to
  {r["final_lr_fraction"]} x lr, weight decay {r["weight_decay"]}, gradient clipping
  {r["grad_clip"]}, batch {r["batch_size"]}, {r["steps"]} steps, seed {r["seed"]}.
* Time: {training["train_seconds"] / 60:.1f} min wall clock, {cpu_text}
  (torch {training["torch"]}; the machine was shared with other jobs). Final training
  loss {training["log"][-1]["loss"]:.3f}. A second run of the script reproduced
  `model.safetensors` byte for byte (same machine, torch and thread count).

## Accuracy by number of documents

Greedy answers, exact match, {m["settings"]["n"]} prompts per cell (seed
`{m["settings"]["seed"]} + n_documents`, gold position uniform), computed by
`focuslens.demo.card.accuracy_table` (which calls `focuslens.evaluate`).
`present`: the key is in one document; `present_none`: fraction of those answered
`NONE`; `absent`: the key is in no document (correct answer `NONE`); `similar`: present
key, half of the distractors share one key word with it.

{accuracy_md}

* Training range (2-12 documents): present-key accuracy
  {min(rows[n]["present"] for n in (2, 4, 8, 12)):.2f}-{max(rows[n]["present"] for n in (2, 4, 8, 12)):.2f}.
* **`DISTRACTING_DOCS = {dd}`**: present-key accuracy {rows[dd]["present"]:.2f}, with
  {rows[dd]["present_none"]:.0%} of the answers `NONE` (distraction shows as
  under-commitment), absent-key accuracy {rows[dd]["absent"]:.2f}.
* Gold-only prompts (the same queries with only the relevant document): accuracy
  {m["gold_only"]["4"]:.2f} (from 4-document prompts) and
  {m["gold_only"][str(dd)]:.2f} (from {dd}-document prompts).

Accuracy at {dd} documents by position of the gold document:

{by_position_md}

## Contextual heads

`focuslens.contextual_scores(model, prompts, query="response", sink=2)` on 100
present-key prompts at {dd} documents, teacher-forced with the gold answer (query
rows: the two value tokens). `relevant`: attention mass on the gold document's span;
`distractors`: on all other documents together; `per_distractor`: that divided by
the number of distractors; `sink`: positions 0-1 (`<bos>`, `[DOC`);
`gold_only_relevant`: mass on the document of the gold-only prompt. Best first.

{heads_md}

The top two heads ({top_names}) hold {top_share:.0%} of the relevant-span mass summed over
all heads; the sink mass of these contextual heads is
{", ".join(_fmt(h["sink"]) for h in top)}.

Same, with `query="predict"` (the rows that predict the answer: the last prompt token
and the first value word):

{heads_predict_md}

At 4 documents (`query="response"`):

{heads_4_md}

## What was tried

{HISTORY}
## Limits

* A toy: word-level synthetic vocabulary, no MLPs, two layers. Its heads, sink and
  distraction are real but simple; use real models for claims about language models.
* Trained on at most {r["max_docs"]} documents ({1 + 6 * r["max_docs"] + 3 + 6 * 4} tokens); longer
  prompts are out of distribution by design. Beyond 32 documents value words repeat
  across documents, which also confuses the second answer word (the model finds it by
  induction on the first).
* Position matters: see the accuracy by gold position above; this is not the
  paper's U-shaped "lost in the middle" curve.
"""

"""The prose of ``MODEL_CARD.md``; the numbers come from :mod:`focuslens.demo.card`."""

from __future__ import annotations

from typing import Any

HISTORY = """\
Every run below was measured on held-out prompts (test seeds `5000 + N`, absent-key
seeds `6000 + N`, training prompts for scores and directions `7000 + N`; 100-150
prompts per cell, so about +-0.08 at 95%). "top-3" are the three heads with the highest
contextual score (`query="response"`), "random-3" three other heads (three draws).

| model | what changed | accuracy (documents) | at the distracting length |
|---|---|---|---|
| v1 (2 x 4 heads, 2-12 documents, answer `v v`) | the first demo model | 1.00 (4), 0.57 (24) | split-softmax top-2 0.00 (random 0.07); directions 0.54-0.56 at every alpha (baseline 0.56) |
| 3 x 8, answer prefix or echo, from scratch | answer format learned from the start | 0.20 (4) | did not learn retrieval in 3,000 steps |
| 3 x 8, two stages, echo, 2-32 documents | curriculum: retrieval first, then echo | 1.00 (24), 0.99 (32), 0.59 (40) | 40 lies beyond training: split-softmax top-3 0.67 vs random-3 0.25; directions 0.53-0.57 (baseline 0.57) |
| e1: stage 2 on 2-48 documents, 25% absent | distraction inside the training range | 1.00 (4), 0.98 (32), 0.65 (48) | errors are wrong values (answered `NONE`: 0.05) |
| e2: 50% absent, 90% of them near misses | the model answers `NONE` when unsure | 1.00 (4), 0.79 (32), 0.41 (48); gold-only 0.77-0.89 | at 48: split-softmax top-3 0.57 vs random-3 0.43-0.52 (baseline 0.37); directions 0.34-0.38 at alpha -1 to 4 |
| v3: e2 + 1-document prompts + head penalty 0.002 | gold-only prompts in training; fewer heads | 0.97 (4), 0.59 (40); gold-only 0.94 | at 40: split-softmax top-3 0.71 vs random-3 0.69-0.71 (baseline 0.56); directions 0.51-0.56; no head pruned |
| v4: head penalty 0.006 | stronger penalty | 0.98 (4), 0.56 (40) | at 40: split-softmax top-3 0.65 vs random-3 0.70-0.71; still no head pruned (AdamW shrinks all heads alike) |
| v5: v3 + next-token loss 0.3 on the rest of the sequence | heads get work at every row, as in a language model | 0.97 (4), 0.79 (32), 0.42 (48) | at 40: split-softmax top-3 0.67 vs random-3 0.47-0.67 (baseline 0.53); directions 0.46-0.53 |
| p1: this model's recipe, stage 2 with a proximal group-lasso step on each head's `W_O` (weight 10) instead of the penalty | prune heads for real, so that few carry the retrieval | 0.70 (4), 0.21 (40); gold-only 0.55 (card seeds, 100 prompts each) | top-3 L0H6, L0H7, L2H3 hold 33%: under RMSNorm a head's scale is free, so every head shrank (to norms 0.0-0.3) and retrieval suffered |
| h1: this model's recipe, stage 2 with a scale-free head-sparsity penalty (per layer, the L1 norm of the heads' `W_O` norms over their L2 norm; weight 1) instead of the penalty | few heads per layer, whatever their scale (weight 0.1 left every head in use after 300 steps) | 0.947 (4), 0.57 (40), 0.44 (48); gold-only 0.89 (card seeds, 150 prompts) | the last layer keeps one head (L2H3; the others' `W_O` norms fall to 0.01-0.9), but the top-3 by contextual score are L0H6, L0H7, L2H3 (share 39%); split-softmax on them 0.31 (baseline 0.55, random 0.20); directions: alpha 2 0.63, alpha -1 0.28, `auto` 0.62 with absent keys 0.99 -> 0.68 |
| l1: this model's recipe, stage 2 twice as long (2,400 steps) and without the head penalty | more training | 1.00 (4), 0.73 (40), 0.65 (48); gold-only 0.99 (card seeds, 150 prompts) | less distracted, so the effects shrink: at 48 (baseline 0.57) split-softmax top-3 0.63 (random 0.31), directions 0.59 at alpha 4 and 0.57 at alpha -1, `auto` 0.54; share 37% |
| a1: this model's recipe, 70% absent keys in stage 2, without the head penalty | more under-commitment, for the directions to undo | 0.77 (4), 0.17 (40); gold-only 0.35 (card seeds, 150 prompts) | the model answers `NONE` far too often, even with the gold document alone; split-softmax top-3 0.39 (baseline 0.18), directions 0.13-0.17 |
| b1: this model's recipe with the unembedding bias held at 0 in both stages | a plain `LlamaForCausalLM`, whose `lm_head` has no bias | 0.93 (4), 0.49 (40), 0.36 (48); gold-only 0.67 (card seeds, 150 prompts) | final answer loss 0.206 (this model: 0.122); gold-only accuracy misses its criterion (0.9) by far, so the bias stays and the bridge gives its Llama a `lm_head` with a bias |
| w1: b1 with a sliding window of 6 positions in layer 0 (local attention, as in GPT-Neo; layers 1-2 global) | layer 0 can no longer match the echoed key against the documents from the answer rows, only join each document's words | 1.00 (4), 1.00 (40), 0.97 (48), 0.79 (64), 0.45 (96) (card seeds, 100 prompts) | retrieval moves to layer 1: the top-3 heads (L1H1, L1H0, L1H3) hold 51% of the relevant mass at 40 documents; but the model is hardly distracted inside its training range (answer loss 0.008). At 64, beyond it (baseline 0.65): share 54%, split-softmax top-3 0.89, random 0.67. A sliding-window layer has no place in `LlamaForCausalLM` |
| w2: w1 with 8-dimensional heads, and the attention output bias also held at 0 | a smaller model, distracted inside its training range | 0.94 (4), 0.72 (24), 0.40 (40), 0.25 (48); gold-only 0.98, absent 0.83 (card seeds, 100 prompts) | at 40 (baseline 0.48): the top-3 heads (L1H2, L1H4, L1H7) hold 42%; split-softmax on them 0.88, on random heads 0.48; but directions learned on them (layer 1, global) give 0.45-0.48 at alpha -1 to 4, 0.38 at alpha -4, `auto` 0.48, although 41% of the answers are `NONE`: the mass these heads miss sits on the other documents (0.53-0.57, and 0.23-0.25 on the query and answer tokens; in this model's top heads 0.25-0.28 and 0.49-0.50), which a fixed query vector cannot tell from the gold one. At 24 (baseline 0.84): split-softmax 0.98, random 0.77; directions 0.89 at alpha 2, 0.81 at alpha -1 |
| w3: w1 with stage 2 on 1-96 documents | distraction inside a longer training range | 1.00 (4), 0.99 (64), 0.98 (80), 0.87 (96); similar 1.00, 0.93, 0.86, 0.72 (card seeds, 100 prompts); 34 min of training on one core | still hardly distracted inside its range; at 96 documents the top-3 heads (L1H0, L1H1, L1H2) hold 63% of the relevant mass |
| **this model** | the v5 recipe, trained end to end by the shipped `train.py` (its weights differ from the v5 experiment's) | see the tables above | see the tables above |

**`alpha="auto"`, before and after.** The rule first calibrated on the last prompt row,
with a window of 5 keys, bisection and `alpha_max` 1. There these heads focus on the
gold-only prompts already (target 0.99), the target was never reached, and the rule
chose alpha 1 on most prompts: 0.62 against a baseline of 0.60. It now calibrates on the
row where the heads find the document (the echoed key's last word: 0.61 of their
attention on the gold document there, against 0.23 on the last prompt row, on the
training prompts), with the window those heads need (1 key: the document's `]`), and
climbs alpha while their focus rises: 0.64 (the table above). On 200 prompts of other
seeds the climb gave 0.715 against 0.64, and of the alternatives it was compared with on
them the best (the smallest alpha near the grid's largest focus: 0.645-0.655).

**Why the directions help less than the oracle (measured).** At the decisive row (the echoed
key's last word, which predicts the first value word; `scripts/decisive_row.py`, 60
prompts at 40 documents) six of the last layer's heads put 0.51-0.63 of their attention
on the gold document's span, mostly on its `]`, and almost all the rest on the other
documents (their `]` 0.22-0.29, their other tokens 0.09-0.24); `<bos>` gets 0.00-0.01.
Their gold mass is what fails when the answer fails (0.59-0.69 when the first value word
is right, 0.26-0.48 when it is wrong). A focus direction adds the same vector to every
query; its logit bias `d_q . k_j` depends on the key's *kind* (document token,
delimiter, sink) and position, not on which document matches the query. It can move
attention from the sink to the documents, which is where it helps in the paper's
models, whose contextual heads park most of their attention on the sink. Here the
attention it would have to move sits on the other documents. Learned with the defaults
on the card's training prompts, the top heads' `d_q` have norms 0.46-0.59 against
queries of norm 9.5-10.6 at the answer rows, so the useful alphas are large (4-8); the
split-softmax oracle, which knows the span, gains about twice as much.
"""


def _mean_alpha(n: dict[str, Any]) -> str:
    a, b = n["auto"].get("mean_alpha"), n["auto_absent"].get("mean_alpha")
    if a is None or b is None:
        return ""
    return f", choosing a mean alpha of {a:.1f} and {b:.1f}"


def _fmt(x: Any, spec: str = ".2f") -> str:
    return format(x, spec) if isinstance(x, float) else str(x)


def _stages_md(stages: list[dict[str, Any]]) -> str:
    lines = [
        "| stage | answer | documents | absent keys | near misses | steps | lr | warm-up | head penalty | next-token loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(stages, start=1):
        answer = "`k k v v <eos>`" if s["echo"] else "`v v <eos>`"
        lines.append(
            f"| {i} | {answer} | {s['min_docs']}-{s['max_docs']} | {s['absent']:.0%} "
            f"| {s['near_miss']:.0%} | {s['steps']} | {s['lr']} | {s['warmup']} "
            f"| {s['head_l1']} | {s['context_loss']} |"
        )
    return "\n".join(lines)


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
    method_md: str,
    method_numbers: dict[str, Any],
    extra_md: list[tuple[str, str]],
    criteria_md: str,
) -> str:
    """Fill the card template."""
    r = training["recipe"]
    m = measurements
    dd = m["settings"]["distracting_docs"]
    rows = {row["n_documents"]: row for row in m["accuracy"]}
    t = m["method"]
    n = method_numbers
    base, base_lo, base_hi = n["base"], n["base_lo"], n["base_hi"]
    ss_top, ss_random = n["ss_top"], n["ss_random"]
    best_acc, worst_alpha, worst_acc = n["best_acc"], n["worst_alpha"], n["worst_acc"]
    top_names = ", ".join(f"L{layer}H{head}" for layer, head in t["top"])
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
    group = config["n_heads"] // config["n_key_value_heads"]
    cpu = training.get("train_cpu_seconds")
    cpu_text = f"{cpu / 60:.1f} min of CPU time" if cpu else "CPU time not recorded"
    max_docs = max(s["max_docs"] for s in r["stages"])
    losses = {e["stage"]: e["loss"] for e in training["log"]}
    extras = "\n\n".join(f"**{title}**\n\n{md}" for title, md in extra_md)
    return f"""# focuslens demo model

A tiny transformer that retrieves the value of a queried key from a list of documents.
It is accurate with a few documents and distracted by many (as many as it was trained
on); a few attention heads of its last layer carry its attention to the relevant
document. At {dd} documents, forcing the top {len(t["top"])} of them onto it (the
split-softmax oracle) lifts accuracy from {base:.2f} to {ss_top:.2f} (on random heads:
{ss_random:.2f}); focus directions, which need no labels at inference, lift it to
{best_acc:.2f} at
alpha {t["best_alpha"]}, and negative alphas lower it ({worst_acc:.2f} at alpha {worst_alpha}).
The directions gain less than the oracle, and the card's acceptance criteria are not all
met: see the end of the card, and "What was tried" for why, measured. It ships with
focuslens so that every tutorial and test runs offline on two CPU cores.

```python
import focuslens
from focuslens.demo import DISTRACTING_DOCS  # {dd}

model = focuslens.load_demo_model()  # offline, about a second
prompts = focuslens.tasks.synthetic_retrieval(200, n_documents=DISTRACTING_DOCS)
focuslens.evaluate(model, prompts).accuracy
```

## Task

`focuslens.tasks.synthetic_retrieval`: documents `[DOC k12 k40 v7 v51 ]` (a two-word key
and a two-word value), then a query `[Q k12 k40`; the model repeats the key and answers
`k12 k40 v7 v51 <eos>`, or `k12 k40 NONE <eos>` when no document has the key. Keys and
values are distinct within a prompt, and up to 32 documents no value word repeats.
Word-level vocabulary of {config["d_vocab"]} tokens (64 key words, 64 value words, `[DOC`,
`]`, `[Q`, `NONE`, `<bos>`, `<eos>`, `<pad>`, `<unk>`); a prompt of N documents has
`1 + 6 N + 3` tokens with BOS.

* **The echoed key** works like the answer prefix of a chat model: the first value word,
  the prediction that decides the answer, is made on the row of the echoed key's last
  word, which is a response row. So `query="response"` (the default of the scores and
  of learning) reads the decisive row.
* **Spans**: each document's span is `k k v v ]`, its closing delimiter included: at
  the decisive row the contextual heads read the gold document from its `]` (see
  "What was tried"). `[DOC` lies outside, like `Document [i]` in the paper.
* **Stop token**: `<eos>` (`model.tokenizer.eos_token`); greedy generation stops on it.
  `prompt.response` is the answer without it.
* **Metric**: exact match of the whole answer, echoed key included
  (`prompt.meta["metric"] == "exact"`).

## Architecture

`HookedTransformer` from `HookedTransformerConfig({arch})`: attention only, rotary
(GPT-NeoX layout), RMSNorm, grouped-query attention ({config["n_heads"]} query heads share
{config["n_key_value_heads"]} key/value heads: query head h reads KV head h // {group}), BOS
prepended so an attention sink can form. Weights: `model.safetensors` (parameters only,
float32); tokenizer: `tokenizer.json` (Hugging Face `tokenizers`, word level, whitespace
split, exact offsets), wrapped in `PreTrainedTokenizerFast` with bos `<bos>`, eos
`<eos>`, pad `<pad>`.

## Training

`python -m focuslens.demo.train --out focuslens/demo` (deterministic: seeded Python RNG
for the data, `torch.manual_seed`, deterministic algorithms, {r["threads"]} thread). Two
stages, each with a fresh AdamW (weight decay {r["weight_decay"]}, gradient clipping
{r["grad_clip"]}, batch {r["batch_size"]}, warm-up then cosine decay to
{r["final_lr_fraction"]} x lr):

{_stages_md(r["stages"])}

* Each sequence holds the same number of documents within a batch, then {r["queries"]}
  queries, each followed by its answer and `<eos>`. Near misses are absent keys that
  share one word with a present key; a key shares one word with an earlier key with a
  probability drawn per sequence from [0, {r["max_share"]}]. Loss: cross-entropy on the
  answer tokens (echoed key included) and their `<eos>`; stage 2 adds a next-token loss
  on the other tokens and a group-lasso penalty on each head's `W_O`.
* Stage 1 teaches retrieval on short prompts: at this scale the echo format does not
  learn from scratch. Stage 2 trains on prompts as long as the ones the demo is
  evaluated on, so the model is distracted by the number of documents, not by
  distances it never saw.
* Time: {training["train_seconds"] / 60:.1f} min wall clock, {cpu_text}
  (torch {training["torch"]}). Final answer loss: stage 1 {losses.get(1, float("nan")):.3f},
  stage 2 {losses.get(2, float("nan")):.3f}.

## Accuracy by number of documents

Greedy answers, exact match, {m["settings"]["n"]} prompts per cell (seed
`{m["settings"]["seed"]} + n_documents`, gold position uniform), computed by
`focuslens.demo.card.accuracy_table` (which calls `focuslens.evaluate`).
`present`: the key is in one document; `present_none`: fraction of those answered
`NONE`; `absent`: the key is in no document (correct answer `k k NONE`); `similar`:
present key, half of the distractors share one key word with it.

{accuracy_md}

* Few documents (2-12): present-key accuracy
  {min(rows[n]["present"] for n in (2, 4, 8, 12)):.2f}-{max(rows[n]["present"] for n in (2, 4, 8, 12)):.2f}.
* **`DISTRACTING_DOCS = {dd}`** (inside the training range, 1-{max_docs}): present-key
  accuracy {rows[dd]["present"]:.2f}, with {rows[dd]["present_none"]:.0%} of the answers
  `NONE`: {rows[dd]["present_none"] / max(1e-9, 1 - rows[dd]["present"]):.0%} of the
  errors are under-commitment, the rest wrong values. Absent-key accuracy
  {rows[dd]["absent"]:.2f}.
* Gold-only prompts (the same queries with only the relevant document): accuracy
  {m["gold_only"]["4"]:.2f} (from 4-document prompts) and
  {m["gold_only"][str(dd)]:.2f} (from {dd}-document prompts).

Accuracy at {dd} documents by position of the gold document:

{by_position_md}

## Contextual heads

`focuslens.contextual_scores(model, prompts, query="response", sink=2)` on 100
present-key prompts at {dd} documents, teacher-forced with the gold answer (query
rows: the answer's tokens, the decisive one among them). `relevant`: attention mass on
the gold document's span; `distractors`: on all other documents together;
`per_distractor`: that divided by the number of distractors; `sink`: positions 0-1
(`<bos>`, `[DOC`); `gold_only_relevant`: mass on the document of the gold-only prompt.
Best first.

{heads_md}

Same, with `query="predict"` (the rows that predict the answer's tokens):

{heads_predict_md}

At 4 documents (`query="response"`):

{heads_4_md}

## The method on this model

`focuslens.demo.card.method_table` at {dd} documents: the top {len(t["top"])} heads (10% of
the model's heads: {top_names}, chosen on 100 training prompts) hold {t["top_share"]:.0%} of the
relevant-span mass summed over all heads. Split-softmax (tau 0.1) and focus directions
(learned with `learn_focus_directions` defaults on the same training prompts) on them and on
{len(t["random"])} random sets of as many other heads (pooled); test prompts use other seeds.
Best positive alpha: {t["best_alpha"]}.

{method_md}

`alpha="auto"`, focuslens's own rule (`focuslens.directions.magnitude`), calibrates per
prompt on the row where the top heads find the relevant document among the distractors:
the row of the echoed key's last word, which the model generates itself (greedily,
unsteered) before the rule runs, and steers while the heads' focus rises. It gives
{n["auto"]["accuracy"]:.2f} with the key present and {n["auto_absent"]["accuracy"]:.2f} with it absent
(baseline {base:.2f} and {n["base_absent"]:.2f}){_mean_alpha(n)}.

Other lengths and similar distractors (half the prompts):

{extras}

### Against the acceptance criteria

{criteria_md}

## What was tried

{HISTORY}
## Limits

* A toy: word-level synthetic vocabulary, no MLPs, three layers. Its heads and
  distraction are real but simple; use real models for claims about language models.
* Trained on at most {max_docs} documents ({1 + 6 * max_docs + 3 + 5 * 4} tokens with the
  queries); longer prompts are out of distribution. Beyond 32 documents value words
  repeat across documents.
* Random heads are a rough control in a model of {config["n_layers"] * config["n_heads"]} heads: a random set
  often holds heads of the first layers, and forcing one of them onto the gold document
  changes what every later layer reads. Pooled over the card's {len(t["random"])} random
  sets, split-softmax gives {ss_random:.2f} at {dd} documents (baseline {base:.2f}); on the
  v5 experiment's weights, random sets drawn on other seeds gave 0.47-0.67 against a
  baseline of 0.53 ("What was tried"): how much a random set hurts depends on the heads
  it draws. Compare the top heads with random heads and with the baseline.
* Focus directions help here by less than the oracle: their best accuracy,
  {best_acc:.2f}, is close to the top of the baseline's 95 % interval
  ({base_lo:.2f}-{base_hi:.2f}). Use the demo to learn the tools and their controls, and real
  models for the size of the directions' effect.
"""

"""Build the tutorial notebooks (``NN-*.ipynb``) from the cell lists in this file.

    python notebooks/_build.py            # rewrite every notebook, outputs empty
    python notebooks/_build.py --check    # exit 1 if a notebook differs from this file

The notebooks are the product for a reader; this file is their source, so that a
change of prose or code is reviewed as text. Every notebook runs top to bottom, offline,
in a few minutes on two CPU cores with the shipped demo model; ``tests/test_notebooks.py``
executes each one in a Jupyter kernel. Outputs are never committed.

A cell is a ``(kind, source)`` pair, ``kind`` being ``"md"`` or ``"code"``; a code cell
whose source starts with ``# parameters`` gets the ``parameters`` tag (papermill's
convention), which the tests use to run notebook 04 on an offline stand-in.
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- 01
NB01 = [
    (
        "md",
        """\
# 01 · Contextual heads: which heads read the relevant document?

A language model that answers a question from many documents must find the one document
that holds the answer and ignore the rest. This notebook looks inside the model for the
attention heads that do the reading, the **contextual heads** of *Focus Directions Make
Your Language Models Pay More Attention to Relevant Contexts* (Zhu et al., 2025):

1. labelled prompts, and how their character spans become token spans;
2. the contextual score of a head, computed by hand and with `focuslens.contextual_scores`;
3. the layer x head map of scores, and the contextual heads;
4. where one head looks in one long prompt;
5. distraction: what happens to accuracy and to the heads' attention as documents are
   added.

Everything runs offline on the demo model shipped with focuslens, in a few minutes on a
laptop CPU.""",
    ),
    ("md", "## The demo model and its task"),
    (
        "code",
        """\
import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
print(model.cfg.n_layers, "layers x", model.cfg.n_heads, "heads")""",
    ),
    (
        "md",
        """\
The demo model is a 2-layer, attention-only transformer with rotary embeddings and
grouped-query attention (4 query heads sharing 2 key/value heads per layer), trained by
`focuslens/demo/train.py` on a synthetic retrieval task. A prompt is a list of
*documents*, each a two-word key and a two-word value, then a query naming one key; the
answer is that key's value. It was trained on 2 to 12 documents; `DISTRACTING_DOCS` is a
number of documents at which it is clearly distracted (see its model card,
`focuslens/demo/MODEL_CARD.md`).""",
    ),
    (
        "code",
        """\
p = synthetic_retrieval(1, n_documents=4, seed=0)[0]
print(p.text)
print("answer:", p.answers, " response:", repr(p.response))
print("relevant document:", repr(p.text[slice(*p.relevant)]))
print("distractors:", [p.text[slice(*s)] for s in p.distractors])""",
    ),
    (
        "md",
        """\
## Labelled prompts: from characters to tokens

A `LabeledPrompt` holds the text and character spans: the `relevant` document, the
`distractors`, and the `response` that follows the prompt (teacher forcing: the model
reads the gold answer, and we watch the heads while it does). A document's span is its
body `k k v v ]`: the key, the value and the closing bracket, on which the model gathers
what the document says; the opening `[DOC` lies outside, like `Document [i]` in the
paper's prompts.

`focuslens.tokenize_prompt` maps the spans to tokens through the tokenizer's own
character offsets, so the mapping is exact for any tokenizer, and adds the BOS token the
model prepends:""",
    ),
    (
        "code",
        """\
import pandas as pd

tp = focuslens.tokenize_prompt(model, p)


def span_of(i):
    if tp.relevant[0] <= i < tp.relevant[1]:
        return "relevant"
    if any(s <= i < e for s, e in tp.distractors):
        return "distractor"
    return "response" if i >= tp.n_prompt else ""


tokens = model.tokenizer.convert_ids_to_tokens(tp.tokens.tolist())
pd.DataFrame({"token": tokens, "span": [span_of(i) for i in range(len(tp))]})""",
    ),
    (
        "md",
        """\
## The contextual score, by hand

For one prompt and one head, with attention pattern `A[i, j]` (query `i`, key `j`), the
query rows `R` of the response and the relevant span `S`:

    score = mean over i in R of ( sum over j in S of A[i, j] )

the share of its attention the head gives to the relevant document while the answer is
written. Here it is by hand, from TransformerLens's full activation cache, for every
head of the last layer:""",
    ),
    (
        "code",
        """\
_, cache = model.run_with_cache(tp.tokens[None])
rows = list(range(tp.n_prompt, len(tp)))  # the response tokens' own positions
s, e = tp.relevant
layer = model.cfg.n_layers - 1
pattern = cache["pattern", layer][0]  # [head, query, key]
by_hand = pattern[:, rows, s:e].sum(-1).mean(-1)
print("by hand:          ", by_hand.numpy().round(4))
scores_one = focuslens.contextual_scores(model, [p])
print("contextual_scores:", scores_one.relevant[layer].numpy().round(4))""",
    ),
    (
        "md",
        """\
Same numbers, but `contextual_scores` never builds that cache: inside each layer's
`hook_pattern` hook it keeps only the sums over spans of the response rows, so it costs
what a forward pass costs, also for long prompts and big models. The same pass gives
the mass on the distractors (all of them, and the largest single one), on the *sink*
(the first tokens, where heads park attention they do not need) and on the rest:""",
    ),
    (
        "code",
        """\
scores_one.to_dataframe().query("layer == @layer").pivot(
    index="head", columns="kind", values="score"
).round(3)""",
    ),
    (
        "md",
        """\
## Contextual heads on many prompts

One prompt is noise. Averaged over prompts with many distracting documents, the scores
single out the heads that read the relevant document; the top ones are the contextual
heads. `focuslens.plots.head_scores` draws layer x head maps (the top heads are marked);
every figure in focuslens is a plotly figure, returned and never shown by the library.""",
    ),
    (
        "code",
        """\
train = synthetic_retrieval(48, n_documents=DISTRACTING_DOCS, seed=0)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(2)
print("contextual heads, best first:", top)
focuslens.plots.head_scores(scores, ["relevant", "distractor_max", "sink"], top_k=2)""",
    ),
    (
        "md",
        """\
Only a few heads score high: they read the relevant document while the answer is
written; the others look at the distractors, the query or the sink. Compare a head's
relevant score with the largest single distractor (`distractor_max`): a contextual head
gives the relevant document far more than any one distractor.

The same scores on the *gold-only* prompts (only the relevant document) show how much
attention the distractors take away from it:""",
    ),
    (
        "code",
        """\
gold = focuslens.contextual_scores(model, [q.gold_only() for q in train])
pd.DataFrame(
    {
        "head": [f"L{l}H{h}" for l, h in top],
        f"relevant, {DISTRACTING_DOCS} documents": [float(scores.relevant[l, h]) for l, h in top],
        "largest distractor": [float(scores.distractor_max[l, h]) for l, h in top],
        "relevant, gold only": [float(gold.relevant[l, h]) for l, h in top],
    }
).round(3)""",
    ),
    (
        "md",
        """\
## Where one head looks

`focuslens.plots.attention_map` runs one prompt and keeps the attention rows of the
answer tokens for the chosen heads (never the full pattern). With many documents it sums
each row per document; the bars below the heatmap are the mean over answer rows,
coloured by span kind. The dropdown switches heads.""",
    ),
    ("code", 'focuslens.plots.attention_map(model, train[0], top, level="documents")'),
    (
        "md",
        "Zoomed on the relevant document, token by token (`window='relevant'` shows it "
        "with 8 tokens of context on each side):",
    ),
    ("code", 'focuslens.plots.attention_map(model, train[0], top, window="relevant")'),
    (
        "md",
        """\
## Distraction as documents are added

The model was trained on up to 12 documents. `focuslens.evaluate` answers each prompt
greedily, scores the answer, and, with `heads=`, measures where those heads looked while
answering (`attn_relevant`, `attn_distractors`, `attn_sink`, `attn_other`). Watch
accuracy and the contextual heads' attention to the relevant document as the number of
documents grows:""",
    ),
    (
        "code",
        """\
sizes = [4, 12, 16, 20, 24, 32]
by_size = {
    n: focuslens.evaluate(
        model, synthetic_retrieval(20, n_documents=n, seed=1), heads=top, progress=False
    )
    for n in sizes
}
pd.DataFrame(
    {
        "documents": sizes,
        "accuracy": [r.accuracy for r in by_size.values()],
        "attention on relevant": [r.summary()["attn_relevant"] for r in by_size.values()],
        "attention on distractors": [r.summary()["attn_distractors"] for r in by_size.values()],
    }
).round(3)""",
    ),
    (
        "code",
        """\
focuslens.plots.accuracy_curves(
    {"demo model": by_size}, x="n_documents", title="Accuracy against the number of documents"
)""",
    ),
    (
        "md",
        """\
Twenty prompts per point make wide intervals (the error bars are 95 % Wilson
intervals); raise the number in the cell above for tighter ones. The demo model was
trained on up to 12 documents. Up to about 16 it is always right and its contextual
heads give most of their attention to the relevant document; past that, accuracy falls
steeply and so does that attention, which moves to the distractors. This is the paper's
phenomenon in miniature.

Where the relevant document sits matters too ("lost in the middle", Liu et al. 2024).
`gold_position=` places it first, in the middle or last:""",
    ),
    (
        "code",
        """\
by_position = {
    where: focuslens.evaluate(
        model,
        synthetic_retrieval(20, n_documents=DISTRACTING_DOCS, gold_position=where, seed=2),
        heads=top,
        progress=False,
    )
    for where in ("first", "middle", "last")
}
focuslens.plots.accuracy_curves(
    {"demo model": by_position},
    x="gold position",
    title=f"Accuracy by position of the relevant document ({DISTRACTING_DOCS} documents)",
)""",
    ),
    (
        "md",
        """\
On the demo model the curve is not the paper's U: a relevant document in the middle is
found, one at the start (farther from the query than anything seen in training) is
mostly missed. The model card (`focuslens/demo/MODEL_CARD.md`) discusses why.

## What next

* [02 · Do they matter?](02-do-they-matter.ipynb): ablate the contextual heads, compare
  them with retrieval heads, and give them more attention on the relevant document with
  the split-softmax oracle, against random heads.
* The API behind this notebook: `focuslens.contextual_scores` (options `query=`,
  `sink=`, `batch_size=`), `focuslens.evaluate`, `focuslens.plots`.""",
    ),
]

# --------------------------------------------------------------------------- 02
NB02 = [
    (
        "md",
        """\
# 02 · Do the contextual heads matter?

Notebook 01 found heads that *look at* the relevant document. Looking is not the same as
using: this notebook asks whether the answer depends on them, in three ways:

1. **ablation**: knock a head out and measure the change of the gold answer's
   log-probability (exactly, and by attribution patching from one backward pass);
2. **retrieval heads** (Wu et al. 2024), a different definition of "the heads that
   read", for comparison;
3. the paper's **split-softmax oracle**: give the contextual heads more attention on the
   relevant document and see whether accuracy recovers, against the same boost on
   random heads and on all heads; and PASTA (Zhang et al. 2023), a softer boost.""",
    ),
    (
        "code",
        """\
import pandas as pd
import torch

import focuslens
from focuslens.attribution import ablation_effects, attribution_patching, joint_ablation_effect
from focuslens.demo import DISTRACTING_DOCS
from focuslens.heads import jaccard, random_like, rank_correlation, top_k
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
train = synthetic_retrieval(32, n_documents=DISTRACTING_DOCS, seed=0)
test = synthetic_retrieval(24, n_documents=DISTRACTING_DOCS, seed=1)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(2)
print("contextual heads:", top)""",
    ),
    (
        "md",
        """\
Heads are chosen on `train` and every accuracy is measured on `test`, other prompts:
choosing and measuring on the same prompts would flatter the chosen heads.

## Ablation: does the answer need the head?

`ablation_effects` replaces one head's output (`hook_z`) by zero, for every head in
turn, and records the change of `log p(answer | prompt)`: negative means the head helped
the answer. `attribution_patching` estimates all of them at once, to first order, from
one forward and one backward pass; on a big model it is the only affordable way to
screen every head.""",
    ),
    (
        "code",
        """\
effects = ablation_effects(model, train[:16])
attribution = attribution_patching(model, train[:16])
focuslens.plots.head_effects(
    {"zero ablation": effects.values, "attribution patching": attribution.values},
    label="change of log p(answer)",
)""",
    ),
    (
        "code",
        """\
table = pd.DataFrame(
    [
        {
            "head": f"L{l}H{h}",
            "relevant score": float(scores.relevant[l, h]),
            "ablation effect": float(effects.values[l, h]),
            "attribution estimate": float(attribution.values[l, h]),
        }
        for l in range(model.cfg.n_layers)
        for h in range(model.cfg.n_heads)
    ]
).sort_values("relevant score", ascending=False)
print(
    "rank correlation, relevant score vs -effect:",
    round(rank_correlation(scores.relevant, -effects.values), 2),
)
print(
    "rank correlation, ablation vs attribution:",
    round(rank_correlation(effects.values, attribution.values), 2),
)
table.round(3)""",
    ),
    (
        "md",
        """\
Knocking out the contextual heads together, against as many random heads (the
control), per example:""",
    ),
    (
        "code",
        """\
control = random_like(top, model, seed=0, disjoint=True)
joint_top = joint_ablation_effect(model, train[:16], top)
joint_random = joint_ablation_effect(model, train[:16], control)
print(f"top heads {top}: mean change of log p(answer) {float(joint_top.mean()):.2f}")
print(f"random heads {control}: mean change of log p(answer) {float(joint_random.mean()):.2f}")""",
    ),
    (
        "md",
        """\
## Retrieval heads, for comparison

A *retrieval head* copies: while the model writes a token that also occurs in the
relevant document, the head's most-attended key is that very token. It is a stricter,
copy-based definition; a head can read a document (high contextual score) without
copying from it.""",
    ),
    (
        "code",
        """\
from focuslens.retrieval import retrieval_scores

retrieval = retrieval_scores(model, train)
print("top retrieval heads:", top_k(retrieval, 2), " contextual heads:", top)
print("Jaccard overlap of the two top-2 sets:", jaccard(top_k(retrieval, 2), top))
print("rank correlation over all heads:", round(rank_correlation(retrieval, scores), 2))
retrieval.figure(top_k=2)""",
    ),
    (
        "md",
        """\
On the demo model the retrieval scores are near zero for every head: while it writes a
value word, no head's single most-attended token is that word in the relevant document.
The model reads a document on its closing `]`, where the first layer has gathered the
document's content, so the contextual heads look *at* the document without pointing at
the token they copy. Two definitions of "the heads that read", two different answers.""",
    ),
    (
        "md",
        """\
## Is attention the lever? The split-softmax oracle

If the contextual heads fail because their attention drifts to distractors, then more
attention on the relevant document, in those heads only, should bring the answers back.
*Split-softmax* sets, in the chosen heads and for every query row, the attention mass `p`
on the relevant span to `p ** tau` and rescales the rest of the row (rows still sum to
one). With `tau = 0.1` a mass of 0.02 becomes about 0.68.

It reads the span labels, so it is an **oracle**: a way to test the mechanism, not a
method you could deploy. Its controls are what make it evidence: the same boost on
random heads, and on every head at once. `contextual_head_experiment` runs all of it
and returns one tidy table (this cell takes a few minutes: it answers the test prompts
once per condition):""",
    ),
    (
        "code",
        """\
from focuslens.experiments import contextual_head_experiment

experiment = contextual_head_experiment(
    model, test, ks=(1, 2), taus=(0.1,), score_prompts=train, n_random=2
)
frame = experiment.to_dataframe()
frame[["condition", "k", "tau", "seed", "heads", "accuracy", "n", "attn_relevant"]].round(3)""",
    ),
    ("code", "experiment.figure(tau=0.1)"),
    (
        "md",
        """\
`attn_relevant` is measured on the same heads (the top contextual heads) in every
condition, so the rows compare. Read the table as the paper does: does boosting the top
heads lift accuracy towards (or past) the gold-only prompt, while random heads do not?

On the demo model it does not. The boost does what it says (the top heads' attention on
the relevant document rises towards its gold-only level), but accuracy falls instead of
rising. What does the model answer?""",
    ),
    (
        "code",
        """\
examples = experiment.examples
for (condition, k), rows in examples.groupby(["condition", "k"], sort=False):
    none = (rows["prediction"] == "NONE").mean()
    print(f"{condition:>10} k={k}: accuracy {rows['correct'].mean():.2f}, answered NONE {none:.2f}")""",
    ),
    (
        "md",
        """\
Forced to look harder at the relevant span, the model decides the key is absent. A
negative result is a result: on this model, attention mass on the relevant document is
not what limits the answer (the [results page](../docs/results.md) has the same
experiment on 100 prompts). The tool's job is to make such checks cheap, with their
controls.

How does the attention move as `tau` falls? `focuslens.plots.allocation` stacks the
mass on relevant / distractors / sink / other of the boosted heads:""",
    ),
    (
        "code",
        """\
from focuslens.interventions import Pasta, SplitSoftmax

sweep = test[:12]
by_tau = {
    tau: focuslens.evaluate(
        model, sweep, intervention=SplitSoftmax(top, tau), heads=top, progress=False
    )
    for tau in (1.0, 0.5, 0.2, 0.1)
}
focuslens.plots.allocation(by_tau, x="tau", title="Attention of the top heads under split-softmax")""",
    ),
    (
        "md",
        """\
## PASTA: a softer boost

PASTA adds `log(alpha)` to the attention logits of the keys *outside* the relevant span
(`alpha < 1` down-weights them), before the softmax: the mass on the span rises by an
amount that depends on the row, instead of being set. Also an oracle:""",
    ),
    (
        "code",
        """\
pasta = {
    "top heads": focuslens.evaluate(
        model, test, intervention=Pasta(top, alpha=0.01), progress=False
    ),
    "random heads": focuslens.evaluate(
        model, test, intervention=Pasta(control, alpha=0.01), progress=False
    ),
}
baseline = frame.query("condition == 'baseline'")["accuracy"].item()
print(f"baseline accuracy {baseline:.3f}")
for name, result in pasta.items():
    print(f"PASTA alpha=0.01 on {name}: accuracy {result.accuracy:.3f} (n={result.n})")""",
    ),
    (
        "md",
        """\
## What next

The oracles need labels. [03 · Focus directions](03-focus-directions.ipynb) learns
vectors that make the contextual heads attend to the relevant document *without*
knowing which one it is.""",
    ),
]

# --------------------------------------------------------------------------- 03
NB03 = [
    (
        "md",
        """\
# 03 · Focus directions: the same effect without labels

The split-softmax oracle of notebook 02 reads the span labels. At inference nobody
labels the relevant document. The paper's answer is a **focus direction**: per head, a
query vector `d_q` and a key vector `d_k` added to the queries and keys (after the
rotary embedding) at every position,

    q <- q + alpha * d_q        k <- k + alpha * d_k

learned once from labelled prompts so that the head attends more to the relevant
document, then applied to any prompt. This notebook:

1. learns focus directions for the contextual heads (the authors' recipe);
2. steers with positive and negative `alpha`, and with `alpha="auto"`, and draws
   accuracy and attention allocation against `alpha`, top heads against random heads;
3. shows that the key direction does nothing (and why);
4. compares with the closed-form first step, and saves and loads directions.""",
    ),
    (
        "code",
        """\
import pandas as pd
import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS
from focuslens.heads import random_like
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
train = synthetic_retrieval(32, n_documents=DISTRACTING_DOCS, seed=0)
test = synthetic_retrieval(16, n_documents=DISTRACTING_DOCS, seed=1)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(2)
print("contextual heads:", top)""",
    ),
    (
        "md",
        """\
## Learning

`learn_focus_directions` follows the authors' recipe: each training prompt's gold-only
variant is answered greedily, and the answer is appended to the full prompt (teacher
forcing); one pass of the unmodified model caches each layer's attention input; then,
layer by layer, with every weight frozen, AdamW maximises the relevant-span mass of the
answer rows with respect to `d_q` and `d_k` of that layer. The model is never modified.

Without `heads=`, every layer is learned (all heads of a layer learn together, each from
its own term of the loss), so that any head can be steered later, including the random
heads of the control; the directions keep the heads ranked by contextual score.""",
    ),
    (
        "code",
        """\
directions = focuslens.learn_focus_directions(model, train, epochs=5)
print(directions)
directions.figure()  # the norm of each head's d_q""",
    ),
    (
        "md",
        """\
## Steering

`directions.steer(model, heads, alpha)` is a context manager: inside it, every forward
pass (and every step of a generation with the KV cache) is steered; on exit every hook
is removed. `directions.steering(heads, alpha)` is the same as an *intervention* object
for `focuslens.evaluate`. A negative `alpha` is a *negative focus direction*: it should
push attention away from the relevant document.""",
    ),
    (
        "code",
        """\
control = random_like(top, model, seed=0, disjoint=True)
alphas = [-8.0, -2.0, 0.0, 2.0, 8.0, 32.0]
steered = {
    a: focuslens.evaluate(
        model, test, intervention=directions.steering(top, a), heads=top, progress=False
    )
    for a in alphas
}
random_steered = {
    a: focuslens.evaluate(
        model, test, intervention=directions.steering(control, a), heads=top, progress=False
    )
    for a in (8.0, 32.0)
}
gold_only = focuslens.evaluate(model, [p.gold_only() for p in test], progress=False)
focuslens.plots.accuracy_curves(
    {"top heads": steered, "random heads": random_steered},
    x="alpha",
    baseline=steered[0.0],
    gold_only=gold_only,
)""",
    ),
    (
        "md",
        """\
How strong is `alpha`? The vectors are added to queries, so what matters is
`alpha * |d_q|` against the length of the head's queries. Learned from a small
initialisation with a small learning rate, the demo's vectors are short, so small
`alpha` changes little; the sweep above goes far enough to see something happen.

Where does the attention of the contextual heads go as `alpha` grows? Too large an
`alpha` pulls attention to irrelevant tokens as well, one of the limits the authors
state:""",
    ),
    ("code", 'focuslens.plots.allocation(steered, x="alpha")'),
    (
        "md",
        """\
On the demo model no `alpha` raises the contextual heads' attention on the relevant
document, and the largest one moves it to the distractors and costs accuracy. Like the
split-softmax oracle of notebook 02, this is a negative result on this model (the
[results page](../docs/results.md) has it on 100 prompts). A fixed `d_q` adds a bias
that depends on the content of each key but not on the question; where the relevant
document differs from the distractors only by matching the question, as here, such a
bias cannot single it out.""",
    ),
    (
        "md",
        """\
## `alpha="auto"`

Results are sensitive to `alpha`. With `alpha="auto"`, focuslens chooses it per prompt
by bisection so that the steered heads' focus on the prompt's last token reaches the
level they had on gold-only prompts, recorded while learning. The rule is focuslens's
own (the paper's revised version has one but did not publish it); see
`focuslens.magnitude`. It costs a few partial forward passes per prompt:""",
    ),
    (
        "code",
        """\
steering_auto = directions.steering(top, "auto")
auto = focuslens.evaluate(model, test, intervention=steering_auto, heads=top, progress=False)
chosen = [float(a) for a in steering_auto.last_alpha]
print(f"alpha='auto': accuracy {auto.accuracy:.3f}; alpha chosen for the last prompt: {chosen}")
pd.DataFrame(
    {
        "alpha": [*alphas, "auto"],
        "accuracy": [r.accuracy for r in steered.values()] + [auto.accuracy],
        "attention on relevant": [r.summary()["attn_relevant"] for r in steered.values()]
        + [auto.summary()["attn_relevant"]],
    }
).round(3)""",
    ),
    (
        "md",
        """\
## The key direction does nothing

Adding `d_k` to every key adds `alpha * q_i . d_k` (plus a constant) to all the logits
of query row `i`: the same amount for every key, which the softmax cancels. The whole
effect is the bias `alpha * d_q . k_j / sqrt(d_head)`, which depends on key `j`'s
content. Check it: steer with the learned directions, with their key vectors set to
zero, and with the bias applied directly to the attention scores (`form="scores"`):""",
    ),
    (
        "code",
        """\
import dataclasses

tokens = focuslens.tokenize_prompt(model, test[0]).tokens[None]
no_keys = dataclasses.replace(directions, d_k=torch.zeros_like(directions.d_k))
with torch.no_grad():
    with directions.steer(model, top, alpha=2.0):
        qk = model(tokens)
    with no_keys.steer(model, top, alpha=2.0):
        queries_only = model(tokens)
    with directions.steer(model, top, alpha=2.0, form="scores"):
        bias = model(tokens)
    plain = model(tokens)
print("steering changes the logits by up to", float((qk - plain).abs().max()))
print("without d_k:                        ", float((qk - queries_only).abs().max()))
print("as a bias on the attention scores:  ", float((qk - bias).abs().max()))""",
    ),
    (
        "md",
        """\
The last two differences are at the level of float rounding: the key vectors could be
dropped. The authors' released key vectors are tiny compared with their query vectors,
as expected when the true gradient of `d_k` is zero.

## The closed-form first step

`method="closed_form"` computes, without training, the gradient of the relevant-span
mass with respect to `d_q` at zero, from one cached pass (and sets `d_k = 0`). How close
is it to the learned direction?""",
    ),
    (
        "code",
        """\
closed = focuslens.learn_focus_directions(model, train, heads=top, method="closed_form")
for layer, head in top:
    cos = torch.nn.functional.cosine_similarity(
        directions.q(layer)[head], closed.q(layer)[head], dim=0
    )
    print(f"L{layer}H{head}: cosine(learned d_q, closed-form d_q) = {float(cos):.2f}")""",
    ),
    (
        "md",
        """\
AdamW's update is per coordinate, so a learned direction drifts towards the sign pattern
of the gradient rather than the gradient itself: the two need not agree closely.

## Saving, sharing, loading

Directions save as safetensors (the tensors) plus JSON metadata (the model's shape, the
hook point, the ranked heads, how they were trained, library versions); nothing is ever
unpickled. Loading with a model checks its shape and refuses another:""",
    ),
    (
        "code",
        """\
import tempfile
from pathlib import Path

path = Path(tempfile.mkdtemp()) / "demo-directions.safetensors"
directions.save(path)
loaded = focuslens.FocusDirections.load(path, model)
print("identical:", torch.equal(loaded.d_q, directions.d_q))
print({k: loaded.training[k] for k in ("method", "epochs", "lr") if k in loaded.training})""",
    ),
    (
        "md",
        "Directions made for another model (here: 3 layers of 4 heads of size 16, no rotary "
        "embedding) are refused, with both shapes named:",
    ),
    (
        "code",
        """\
from focuslens.directions import ModelShape

shape = ModelShape(n_layers=3, n_heads=4, n_key_value_heads=4, d_head=16, rotary=False)
foreign = focuslens.FocusDirections(torch.ones(3, 4, 16), torch.zeros(3, 4, 16), shape)
foreign.save(path.with_name("foreign.safetensors"))
try:
    focuslens.FocusDirections.load(path.with_name("foreign.safetensors"), model)
except ValueError as error:
    print("refused:", error)""",
    ),
    (
        "md",
        """\
## What next

[04 · Your own model](04-your-own-model.ipynb) runs the same pipeline on a model loaded
by name (GPT-2, Qwen, Llama) and on the authors' released directions.""",
    ),
]

# --------------------------------------------------------------------------- 04
NB04 = [
    (
        "md",
        """\
# 04 · Your own model, and the authors' released directions

The same pipeline as notebooks 01-03, on a model you load by name and on natural-language
multi-document questions:

1. load a model and check that its hooks behave as focuslens needs;
2. build labelled multi-document QA prompts (with the model's chat template);
3. baseline and gold-only accuracy, contextual scores, the contextual heads;
4. learn focus directions and steer with them;
5. import the authors' released directions and steer with those.

**This notebook needs weights you download.** Set the parameters below: a model name
TransformerLens knows (its weights in your Hugging Face cache, e.g. after
`huggingface-cli download meta-llama/Llama-3.2-3B-Instruct`) and, for part 5, the
folder of the authors' released directions (from their repository,
`billzyx/focus_direction`) for that model. Released directions exist for
Llama-3.2-3B-Instruct, Qwen2.5-7B-Instruct and Ministral-8B-Instruct-2410.

**What the tests run.** focuslens's tests execute this notebook offline with
`SMOKE_TEST = True`: the model is then a small *random* model of the Llama family's
architecture (rotary, grouped-query attention) and the "release" is random vectors in
the release's file layout, both built by `notebooks/_offline.py`. A random model answers
nothing correctly and its heads mean nothing; the smoke test only checks that every cell
runs.""",
    ),
    (
        "code",
        """\
# parameters
MODEL_NAME = "meta-llama/Llama-3.2-3B-Instruct"  # any name TransformerLens knows
RELEASE_DIR = "focus_direction/head_features/meta-llama_Llama-3.2-3B-Instruct/direction_relevant"
N_HEADS = 20  # contextual heads to steer (the authors' default)
ALPHA = 0.3  # steering strength (the authors use 0.2 or 0.3 with 20 heads)
MAX_NEW_TOKENS = 32
SMOKE_TEST = False  # True: offline random stand-ins for the model and the release""",
    ),
    (
        "md",
        """\
## 1 · The model

`focuslens.models.load_model` loads a `HookedTransformer` by name (or the demo model,
`"demo"`), offline when the weights are cached. `check_backend` then checks, on the
model itself, the hook behaviour focuslens relies on (pattern rows sum to one, scores
are pre-softmax, writes to the pattern take effect, ...).""",
    ),
    (
        "code",
        """\
import focuslens
from focuslens.models import check_backend, load_model

if SMOKE_TEST:
    import torch
    from _offline import fake_release, tiny_model

    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a shared CPU
    model = tiny_model()  # random weights, Llama-family architecture, a BPE tokenizer
    RELEASE_DIR = fake_release(model)  # random vectors in the release's file layout
    N_HEADS = 4
    MAX_NEW_TOKENS = 3
else:
    model = load_model(MODEL_NAME, dtype="float32")
print(check_backend(model))""",
    ),
    (
        "md",
        """\
## 2 · Labelled multi-document questions

`focuslens.tasks.qa_prompt` writes the "lost in the middle" prompt the paper uses (an
instruction, numbered documents, the question) with the gold document at a chosen
position, and labels its span. With `chat_template=model.tokenizer` the prompt becomes
the user turn of the model's chat template, as for the paper's instruction-tuned models.
Below, a handful of questions written for this notebook; for the paper's setting, load
NQ-Open with `focuslens.tasks.load_lost_in_the_middle(path)` (20 documents, gold at 0, 4,
9, 14 or 19).""",
    ),
    (
        "code",
        """\
from focuslens.tasks import qa_prompt

QUESTIONS = [
    ("Who wrote the play Hamlet?", ["Shakespeare"],
     ("Hamlet", "Hamlet is a tragedy written by William Shakespeare around 1600.")),
    ("What is the capital of Australia?", ["Canberra"],
     ("Australia", "Australia is a country in Oceania. Its capital city is Canberra.")),
    ("Which planet is known as the Red Planet?", ["Mars"],
     ("Mars", "Mars is the fourth planet from the Sun, often called the Red Planet.")),
    ("Who painted the Mona Lisa?", ["Leonardo da Vinci", "Leonardo"],
     ("Mona Lisa", "The Mona Lisa is a portrait painted by Leonardo da Vinci.")),
    ("What is the chemical symbol of gold?", ["Au"],
     ("Gold", "Gold is a chemical element with the symbol Au and atomic number 79.")),
    ("In which year did the Berlin Wall fall?", ["1989"],
     ("Berlin Wall", "The Berlin Wall fell on 9 November 1989, during the revolutions.")),
]  # fmt: skip
DISTRACTORS = [
    ("Rome", "Rome is the capital city of Italy and of the Lazio region."),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level."),
    ("Python", "Python is a programming language created by Guido van Rossum."),
    ("Moon", "The Moon is Earth's only natural satellite."),
    ("Amazon River", "The Amazon is the largest river in the world by discharge volume."),
    ("Violin", "The violin is a wooden string instrument of the violin family."),
    ("Photosynthesis", "Photosynthesis converts light energy into chemical energy."),
    ("Tokyo", "Tokyo is the capital of Japan and its most populous city."),
]
template = model.tokenizer if getattr(model.tokenizer, "chat_template", None) else None
prompts = [
    qa_prompt(q, answers, doc, DISTRACTORS, gold_position=i % 5, chat_template=template)
    for i, (q, answers, doc) in enumerate(QUESTIONS)
]
print(prompts[0].text)""",
    ),
    (
        "md",
        """\
If the chat template writes the BOS token itself (Llama 3's does) and the model also
prepends one, the prompt would start with two. Check the first tokens, and if you see
two BOS tokens set `model.cfg.default_prepend_bos = False` (see the how-to on batching
and chat templates):""",
    ),
    (
        "code",
        """\
tp = focuslens.tokenize_prompt(model, prompts[0])
print(model.tokenizer.convert_ids_to_tokens(tp.tokens[:4].tolist()))""",
    ),
    (
        "md",
        """\
## 3 · Accuracy and contextual heads

Accuracy is the paper's *best subspan exact match* (a gold answer, normalised, occurs in
the normalised prediction). The scores follow the authors' recipe: the model first
answers each prompt greedily, then one teacher-forced pass over prompt + answer measures
each head's attention mass on the gold document from the answer's tokens.""",
    ),
    (
        "code",
        """\
from focuslens.generation import generate_greedy

kw = {"max_new_tokens": MAX_NEW_TOKENS, "progress": False}
baseline = focuslens.evaluate(model, prompts, **kw)
gold_only = focuslens.evaluate(model, [p.gold_only() for p in prompts], **kw)
print(f"baseline {baseline.accuracy:.2f}, gold only {gold_only.accuracy:.2f} (n={baseline.n})")
baseline.to_dataframe()[["prediction", "answers", "correct", "gold_position"]]""",
    ),
    (
        "code",
        """\
def answered(prompt):
    tp = focuslens.tokenize_prompt(model, prompt)
    text = generate_greedy(model, tp.tokens, max_new_tokens=MAX_NEW_TOKENS).text
    return prompt.with_response(text if text.strip() else " " + prompt.answers[0])


scored = [answered(p) for p in prompts]
scores = focuslens.contextual_scores(model, scored, batch_size=2)
heads = scores.top_heads(N_HEADS)
print("top contextual heads:", heads[:10])
scores.figure()""",
    ),
    (
        "md",
        """\
## 4 · Focus directions on your model

Learning needs labelled prompts, as many as you can afford (the authors use half of
their NQ-Open prompts); a handful shows the mechanics. Evaluate on other prompts than
those you learn on.""",
    ),
    (
        "code",
        """\
learned = focuslens.learn_focus_directions(
    model, prompts, heads=heads, epochs=2, max_new_tokens=MAX_NEW_TOKENS
)
steered = focuslens.evaluate(
    model, prompts, intervention=learned.steering(heads, ALPHA), heads=heads[:4], **kw
)
print(f"steered with learned directions (alpha={ALPHA}): accuracy {steered.accuracy:.2f}")
steered.to_dataframe()[["prediction", "correct", "attn_relevant", "attn_sink"]]""",
    ),
    (
        "md",
        """\
## 5 · The authors' released directions

`FocusDirections.from_release` reads the release's per-layer
`head_{q,k}_directions_{layer}.pth` files with `torch.load(..., weights_only=True)` (no
code is unpickled) and its ranked `relevant_heads.json`, and checks every shape against
the model, naming both when they differ. Their heads are the authors' contextual heads,
best first; steer the top `N_HEADS` with `ALPHA`, as in the paper.""",
    ),
    (
        "code",
        """\
from pathlib import Path

if Path(RELEASE_DIR).is_dir():
    released = focuslens.FocusDirections.from_release(RELEASE_DIR, model)
    print(released)
    print("the authors' top heads:", released.top_heads(5))
    overlap = set(released.top_heads(N_HEADS)) & set(heads)
    print(f"{len(overlap)} of the top {N_HEADS} heads are also among those found here")
    with_release = focuslens.evaluate(
        model, prompts, intervention=released.steering(N_HEADS, ALPHA), **kw
    )
    print(f"steered with the released directions: accuracy {with_release.accuracy:.2f}")
else:
    print(f"no release folder at {RELEASE_DIR!r}: set RELEASE_DIR to run this part")""",
    ),
    (
        "md",
        """\
Save what you learned to share it (`learned.save("my-model.safetensors")`), and write
everything into one report with the command line: `focuslens scores|learn|eval|steer
--model MODEL_NAME ...` then `focuslens report RUN` (see the CLI reference).""",
    ),
]

NOTEBOOKS = {
    "01-contextual-heads.ipynb": NB01,
    "02-do-they-matter.ipynb": NB02,
    "03-focus-directions.ipynb": NB03,
    "04-your-own-model.ipynb": NB04,
}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook with empty outputs and a Python 3 kernel."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        source = dedent(source).strip("\n")
        if kind == "md":
            cell = nbformat.v4.new_markdown_cell(source)
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(source)
            if source.startswith("# parameters"):
                cell.metadata["tags"] = ["parameters"]
        else:
            raise ValueError(f"cell {i}: kind must be 'md' or 'code', got {kind!r}")
        cell.id = f"cell-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(cells: list[tuple[str, str]]) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (argv if argv is not None else sys.argv[1:])
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / name
        text = render(cells)
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {stale}; run python notebooks/_build.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

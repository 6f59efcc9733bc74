# %% [markdown]
# # 02 · Do the contextual heads matter?
#
# Notebook 01 found heads that *look at* the relevant document. Looking is not the same as
# using: this notebook asks whether the answer depends on them, in three ways:
#
# 1. **ablation**: knock a head out and measure the change of the gold answer's
#    log-probability (exactly, and by attribution patching from one backward pass); then
#    **activation patching** from the gold-only prompt, with intervals over prompts, to
#    ask whether the distractors' harm passes through the head;
# 2. **retrieval heads** (Wu et al. 2024), a different definition of "the heads that
#    read", for comparison;
# 3. the paper's **split-softmax oracle**: give the contextual heads more attention on the
#    relevant document and see whether accuracy recovers, against the same boost on
#    random heads and on all heads; and PASTA (Zhang et al. 2023), a softer boost.

# %%
import pandas as pd
import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS
from focuslens.heads import jaccard, random_like, rank_correlation, top_k
from focuslens.interventions.effects import (
    ablation_effects,
    attribution_patching,
    joint_ablation_effect,
)
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
train = synthetic_retrieval(32, n_documents=DISTRACTING_DOCS, seed=0)
test = synthetic_retrieval(24, n_documents=DISTRACTING_DOCS, seed=1)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(3)
print("contextual heads:", top)

# %% [markdown]
# Heads are chosen on `train` and every accuracy is measured on `test`, other prompts:
# choosing and measuring on the same prompts would flatter the chosen heads.
#
# ## Ablation: does the answer need the head?
#
# `ablation_effects` replaces one head's output (`hook_z`) by zero, for every head in
# turn, and records the change of `log p(answer | prompt)`: negative means the head helped
# the answer. `attribution_patching` estimates all of them at once, to first order, from
# one forward and one backward pass; on a big model it is the only affordable way to
# screen every head.

# %%
effects = ablation_effects(model, train[:16])
attribution = attribution_patching(model, train[:16])
focuslens.plots.head_effects(
    {"zero ablation": effects.values, "attribution patching": attribution.values},
    label="change of log p(answer)",
)

# %%
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
table.round(3)

# %% [markdown]
# Knocking out the contextual heads together, against as many random heads (the
# control), per example:

# %%
control = random_like(top, model, seed=0, disjoint=True)
joint_top = joint_ablation_effect(model, train[:16], top)
joint_random = joint_ablation_effect(model, train[:16], control)
print(f"top heads {top}: mean change of log p(answer) {float(joint_top.mean()):.2f}")
print(f"random heads {control}: mean change of log p(answer) {float(joint_random.mean()):.2f}")

# %% [markdown]
# Every contextual head of the last layer helps the answer (removing one costs 0.6 to
# 1.3 nats of log-probability), but the heads the answer needs most are in the first
# layer (removing L0H3 costs about 40 nats): they build what the last layer reads. So
# the contextual score ranks heads by what they read, not by how much the answer needs
# them, and the two rankings hardly agree over all 24 heads. Attribution patching, a
# first-order estimate, misses those large effects of whole-head removal: it agrees with
# ablation on which heads help only for small changes (the tests check it against 1 %
# ablations). Knocking out the three contextual heads together costs less than three
# random heads, which include heads of the first two layers.
#
# ## A head study with intervals: does distraction act through these heads?
#
# Ablation asks whether the answer needs a head *at all*. The question of this notebook
# is narrower: does the distractors' harm pass through the contextual heads? Activation
# patching answers it. `patch_heads` runs each prompt's gold-only variant (the relevant
# document alone), takes one head's output at the rows that predict the answer, writes it
# into the distracted run, and measures the change of `log p(answer)`. Every number gets
# a 95 % bootstrap interval over prompts (`.ci()`, `to_dataframe(level=...)`), and
# resample ablation (`mode="resample"`: the head's output from another prompt of the
# same length) joins zero ablation.

# %%
from focuslens.heads import HeadScores, bootstrap_ci
from focuslens.interventions import joint_patch_effect

study = train[:16]
patched = focuslens.patch_heads(model, study, source="gold_only")
resampled = ablation_effects(model, study, mode="resample")
print(
    f"mean log p(answer): distracted {float(patched.baseline.mean()):.2f}, "
    f"gold-only {float(patched.reference.mean()):.2f}"
)
patched.figure(ci=0.95)  # hover a head: its effect and interval

# %%
relevant = HeadScores(scores.relevant, per_example=scores.per_example["relevant"])
measures = {
    "relevant score": relevant,
    "gold-only patching": patched,
    "zero ablation": effects,
    "resample ablation": resampled,
}
rows = []
for name, table in measures.items():
    low, high = table.ci(0.95)
    for l, h in table.top_heads(3, largest=name in ("relevant score", "gold-only patching")):
        rows.append(
            {
                "measure": name,
                "head": f"L{l}H{h}",
                "value": float(table.values[l, h]),
                "95% low": float(low[l, h]),
                "95% high": float(high[l, h]),
            }
        )
print(
    "rank correlation, relevant score vs patching:",
    round(rank_correlation(scores.relevant, patched.values), 2),
)
pd.DataFrame(rows).round(3)

# %% [markdown]
# The top-3 contextual heads patched together, against three random heads on the same
# prompts: the difference per prompt, and its interval.

# %%
gain_top = joint_patch_effect(model, study, top)
gain_random = joint_patch_effect(model, study, control)
low, high = bootstrap_ci((gain_top - gain_random)[:, None])
print(f"top heads patched together: {float(gain_top.mean()):+.2f} nats")
print(f"random heads patched together: {float(gain_random.mean()):+.2f} nats")
print(
    f"difference: {float((gain_top - gain_random).mean()):+.2f} "
    f"[{float(low[0]):+.2f}, {float(high[0]):+.2f}]"
)

# %% [markdown]
# On these 16 prompts the answer's mean log-probability is -1.06 with the distractors
# and -0.45 on the gold-only prompts. Patching puts the last-layer heads first, as the
# contextual score does (L2H4 leads both; rank correlation 0.41 over the 24 heads), and
# the top three patching effects have intervals that exclude zero. The two ablations put
# first-layer heads first instead: the answer needs those heads on every prompt, but the
# distractors' harm does not pass through them. Patched together, the three contextual
# heads recover +0.86 nats, more than the whole gap of 0.61, and three random heads
# -0.10; the paired difference, +0.96 [+0.56, +1.50], excludes zero. The page
# [A head study with intervals](../docs/head-studies.md) runs the same study on 128
# prompts.
#
# ## Retrieval heads, for comparison
#
# A *retrieval head* copies: while the model writes a token that also occurs in the
# relevant document, the head's most-attended key is that very token. It is a stricter,
# copy-based definition; a head can read a document (high contextual score) without
# copying from it.

# %%
from focuslens.scores.retrieval import retrieval_scores

retrieval = retrieval_scores(model, train)
print("top retrieval heads:", top_k(retrieval, 3), " contextual heads:", top)
print("Jaccard overlap of the two top-3 sets:", jaccard(top_k(retrieval, 3), top))
print("largest retrieval score of any head:", round(float(retrieval.values.max()), 3))
retrieval.figure(top_k=3)

# %% [markdown]
# On the demo model the retrieval score is zero for every head (the "top" retrieval
# heads printed above are an arbitrary pick among ties): while it writes a
# value word, no head's single most-attended token is that word in the relevant document.
# The model reads a document on its closing `]`, where the first layer has gathered the
# document's content, so the contextual heads look *at* the document without pointing at
# the token they copy. Two definitions of "the heads that read", two different answers.

# %% [markdown]
# ## Is attention the lever? The split-softmax oracle
#
# If the contextual heads fail because their attention drifts to distractors, then more
# attention on the relevant document, in those heads only, should bring the answers back.
# *Split-softmax* sets, in the chosen heads and for every query row, the attention mass `p`
# on the relevant span to `p ** tau` and rescales the rest of the row (rows still sum to
# one). With `tau = 0.1` a mass of 0.02 becomes about 0.68.
#
# It reads the span labels, so it is an **oracle**: a way to test the mechanism, not a
# method you could deploy. Its controls are what make it evidence: the same boost on
# random heads, and on every head at once. `contextual_head_experiment` runs all of it
# and returns one tidy table (the slowest cell of the notebook: it answers the test
# prompts once per condition):

# %%
from focuslens.evaluation.experiments import contextual_head_experiment

experiment = contextual_head_experiment(
    model, test, ks=(1, 3), taus=(0.1,), score_prompts=train, n_random=2
)
frame = experiment.to_dataframe()
frame[["condition", "k", "tau", "seed", "heads", "accuracy", "n", "attn_relevant"]].round(3)

# %%
experiment.figure(tau=0.1)

# %% [markdown]
# `attn_relevant` is measured on the same heads (the top contextual heads) in every
# condition, so the rows compare. Read the table as the paper does: does boosting the top
# heads lift accuracy towards (or past) the gold-only prompt, while random heads do not?
#
# On the demo model it does, for the top heads. Boosting the top 3 lifts accuracy above
# the baseline and their attention on the relevant document to about its gold-only
# level; one head alone is not enough. The same boost on random heads lowers accuracy,
# and on every head at once it breaks the model. What does the model answer?

# %%
examples = experiment.examples
for (condition, k), rows in examples.groupby(["condition", "k"], sort=False):
    none = rows["prediction"].str.endswith("NONE").mean()
    print(f"{condition:>10} k={k}: accuracy {rows['correct'].mean():.2f}, answered NONE {none:.2f}")

# %% [markdown]
# Under-commitment is what the boost cures: a quarter of the baseline's answers say the
# key is absent (`NONE`), and almost none once the top 3 heads are focused; random heads
# raise that share. Boosting every head gives no `NONE` and no right answer either: the
# whole model is pushed off its normal computation. With 24 prompts the intervals are
# wide; the [results page](../docs/results.md) has the same experiment on 300 prompts
# (0.60 to 0.74 on the top 3 heads, 0.20 on random heads).
#
# Are these differences real on 24 prompts? Every run answered the same prompts, so
# `compare` pairs them, prompt by prompt, with the baseline and with each random set:
# how many prompts the top-k run gets right that the reference gets wrong (`fixed`) and
# the reverse (`broken`), and the exact McNemar p-value.

# %%
experiment.compare(tau=0.1).round(3)

# %% [markdown]
# On 24 prompts only one gap is beyond doubt: against the first random set, whose boost
# breaks the model, the top 3 heads win 13 prompts and lose none. Against the baseline
# they fix 3 prompts and break none, which chance alone would give one time in four
# (p = 0.25), and the interval on the difference still includes zero. That is why the
# model card measures the same comparison on 300 prompts, where the oracle's gain is
# clear.
#
# How does the attention move as `tau` falls? `focuslens.plots.allocation` stacks the
# mass on relevant / distractors / sink / other of the boosted heads:

# %%
from focuslens.interventions import Pasta, SplitSoftmax

sweep = test[:12]
by_tau = {
    tau: focuslens.evaluate(
        model, sweep, intervention=SplitSoftmax(top, tau), heads=top, progress=False
    )
    for tau in (1.0, 0.5, 0.2, 0.1)
}
focuslens.plots.allocation(by_tau, x="tau", title="Attention of the top heads under split-softmax")

# %% [markdown]
# ## PASTA: a softer boost
#
# PASTA adds `log(alpha)` to the attention logits of the keys *outside* the relevant span
# (`alpha < 1` down-weights them), before the softmax: the mass on the span rises by an
# amount that depends on the row, instead of being set. Also an oracle:

# %%
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
    print(f"PASTA alpha=0.01 on {name}: accuracy {result.accuracy:.3f} (n={result.n})")

# %% [markdown]
# PASTA gives the same picture as split-softmax: a gain on the top heads, a loss on
# random heads.
#
# ## What next
#
# The oracles need labels. [03 · Focus directions](03-focus-directions.ipynb) learns
# vectors that make the contextual heads attend to the relevant document *without*
# knowing which one it is.

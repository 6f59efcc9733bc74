# %% [markdown]
# # 03 · Focus directions: the same effect without labels
#
# The split-softmax oracle of notebook 02 reads the span labels. At inference nobody
# labels the relevant document. The paper's answer is a **focus direction**: per head, a
# query vector `d_q` and a key vector `d_k` added to the queries and keys (after the
# rotary embedding) at every position,
#
#     q <- q + alpha * d_q        k <- k + alpha * d_k
#
# learned once from labelled prompts so that the head attends more to the relevant
# document, then applied to any prompt. This notebook:
#
# 1. learns focus directions for the contextual heads (the authors' recipe);
# 2. steers with positive and negative `alpha`, and with `alpha="auto"`, and draws
#    accuracy and attention allocation against `alpha`, top heads against random heads;
# 3. shows that the key direction does nothing (and why);
# 4. compares with the closed-form first step, and saves and loads directions.

# %%
import pandas as pd
import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS
from focuslens.heads import random_like
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
train = synthetic_retrieval(64, n_documents=DISTRACTING_DOCS, seed=0)
test = synthetic_retrieval(60, n_documents=DISTRACTING_DOCS, seed=1)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(3)
print("contextual heads:", top)

# %% [markdown]
# ## Learning
#
# `learn_focus_directions` follows the authors' recipe: each training prompt's gold-only
# variant is answered greedily, and the answer is appended to the full prompt (teacher
# forcing); one pass of the unmodified model caches each layer's attention input; then,
# layer by layer, with every weight frozen, AdamW maximises the relevant-span mass of the
# answer rows with respect to `d_q` and `d_k` of that layer. The model is never modified.
#
# Without `heads=`, every layer is learned (all heads of a layer learn together, each from
# its own term of the loss), so that any head can be steered later, including the random
# heads of the control; the directions keep the heads ranked by contextual score.

# %%
directions = focuslens.learn_focus_directions(model, train)  # the authors' defaults: 10 epochs
print(directions)
directions.figure()  # the norm of each head's d_q

# %% [markdown]
# ## Steering
#
# `directions.steer(model, heads, alpha)` is a context manager: inside it, every forward
# pass (and every step of a generation with the KV cache) is steered; on exit every hook
# is removed. `directions.steering(heads, alpha)` is the same as an *intervention* object
# for `focuslens.evaluate`. A negative `alpha` is a *negative focus direction*: it should
# push attention away from the relevant document.

# %%
control = random_like(top, model, seed=0, disjoint=True)
alphas = [-4.0, -2.0, 0.0, 2.0, 4.0, 8.0, 16.0]
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
    for a in (4.0, 16.0)
}
gold_only = focuslens.evaluate(model, [p.gold_only() for p in test], progress=False)
focuslens.plots.accuracy_curves(
    {"top heads": steered, "random heads": random_steered},
    x="alpha",
    baseline=steered[0.0],
    gold_only=gold_only,
)

# %% [markdown]
# How strong is `alpha`? The vectors are added to queries, so what matters is
# `alpha * |d_q|` against the length of the head's queries. Learned from a small
# initialisation with a small learning rate, the demo's vectors are short (norms below
# 1 in the top heads, whose queries have norms of about 10), so `alpha` must be
# several units before anything happens; the sweep above goes far enough to see it.
#
# Where does the attention of the contextual heads go as `alpha` grows? Too large an
# `alpha` pulls attention to irrelevant tokens as well, one of the limits the authors
# state:

# %%
focuslens.plots.allocation(steered, x="alpha")

# %% [markdown]
# On the demo model the directions do what the paper says, on a small scale (table
# below): accuracy rises with `alpha` up to 4 and the share of answers saying the key is
# absent (`NONE`) falls; a negative `alpha` distracts the model, with more `NONE`
# answers; and too large an `alpha` hurts, as the heads' attention leaves the relevant
# document. The same directions on random heads cost accuracy. At useful alphas the top
# heads' attention on the relevant document (averaged over the answer rows) hardly
# moves: a fixed `d_q` adds a bias that depends on each key's content but not on the
# question, so it can shift attention between kinds of tokens but cannot single out the
# one document that matches the question. The gain is about half of the split-softmax
# oracle's of notebook 02; the [results page](../docs/results.md) has both on 300
# prompts, and [When focusing does not help](../docs/focusing-fails.md) measures why.

# %% [markdown]
# ## `alpha="auto"`
#
# Results are sensitive to `alpha`. With `alpha="auto"`, focuslens chooses it per prompt.
# While learning, it recorded where the steered heads find the relevant document (here
# the row of the echoed key's last word, which predicts the first value word) and how
# focused they are there on gold-only prompts. At inference the model first generates
# the echo itself, greedily and unsteered; then alpha climbs while the heads' focus on
# that row rises, and stops where it stops rising or reaches the gold-only level. The
# rule is focuslens's own (the paper's revised version has one but did not publish it);
# see `focuslens.directions.magnitude`. It costs a few partial forward passes per prompt:

# %%
steering_auto = directions.steering(top, "auto")
auto = focuslens.evaluate(model, test, intervention=steering_auto, heads=top, progress=False)
chosen = torch.tensor(steering_auto.history)
print(f"alpha='auto': accuracy {auto.accuracy:.3f}; alpha chosen: mean {chosen.mean():.2f}")
print("random heads:", {a: round(r.accuracy, 3) for a, r in random_steered.items()})
pd.DataFrame(
    {
        "alpha": [*alphas, "auto"],
        "accuracy": [r.accuracy for r in steered.values()] + [auto.accuracy],
        "attention on relevant": [r.summary()["attn_relevant"] for r in steered.values()]
        + [auto.summary()["attn_relevant"]],
        "answered NONE": [
            r.to_dataframe()["prediction"].str.endswith("NONE").mean()
            for r in [*steered.values(), auto]
        ],
    }
).round(3)

# %% [markdown]
# Here `auto` picks a mean alpha of 3.7 and gives 0.58, as alpha 2 does (baseline 0.55,
# alpha 4: 0.63). One focus statistic per prompt is a noisy guide: some prompts stop
# early, some climb too far. On the card's 300 prompts it gives 0.64 against a baseline
# of 0.60 and a best fixed alpha of 0.66.
#
# ## The key direction does nothing
#
# Adding `d_k` to every key adds `alpha * q_i . d_k` (plus a constant) to all the logits
# of query row `i`: the same amount for every key, which the softmax cancels. The whole
# effect is the bias `alpha * d_q . k_j / sqrt(d_head)`, which depends on key `j`'s
# content. Check it: steer with the learned directions, with their key vectors set to
# zero, and with the bias applied directly to the attention scores (`form="scores"`):

# %%
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
print("as a bias on the attention scores:  ", float((qk - bias).abs().max()))

# %% [markdown]
# The last two differences are at the level of float rounding: the key vectors could be
# dropped. The authors' released key vectors are tiny compared with their query vectors,
# as expected when the true gradient of `d_k` is zero.
#
# ## The closed-form first step
#
# `method="closed_form"` computes, without training, the gradient of the relevant-span
# mass with respect to `d_q` at zero, from one cached pass (and sets `d_k = 0`). How close
# is it to the learned direction?

# %%
closed = focuslens.learn_focus_directions(model, train, heads=top, method="closed_form")
for layer, head in top:
    cos = torch.nn.functional.cosine_similarity(
        directions.q(layer)[head], closed.q(layer)[head], dim=0
    )
    print(f"L{layer}H{head}: cosine(learned d_q, closed-form d_q) = {float(cos):.2f}")

# %% [markdown]
# Here the two point the same way (cosines of about 0.9). That is not guaranteed: AdamW's
# update is per coordinate, so a learned direction drifts towards the sign pattern of the
# gradient rather than the gradient itself, and the two need not agree closely.
#
# ## Saving, sharing, loading
#
# Directions save as safetensors (the tensors) plus JSON metadata (the model's shape, the
# hook point, the ranked heads, how they were trained, library versions); nothing is ever
# unpickled. Loading with a model checks its shape and refuses another:

# %%
import tempfile
from pathlib import Path

path = Path(tempfile.mkdtemp()) / "demo-directions.safetensors"
directions.save(path)
loaded = focuslens.FocusDirections.load(path, model)
print("identical:", torch.equal(loaded.d_q, directions.d_q))
print({k: loaded.training[k] for k in ("method", "epochs", "lr") if k in loaded.training})

# %% [markdown]
# Directions made for another model (here: 3 layers of 4 heads of size 16, no rotary embedding) are refused, with both shapes named:

# %%
from focuslens.directions import ModelShape

shape = ModelShape(n_layers=3, n_heads=4, n_key_value_heads=4, d_head=16, rotary=False)
foreign = focuslens.FocusDirections(torch.ones(3, 4, 16), torch.zeros(3, 4, 16), shape)
foreign.save(path.with_name("foreign.safetensors"))
try:
    focuslens.FocusDirections.load(path.with_name("foreign.safetensors"), model)
except ValueError as error:
    print("refused:", error)

# %% [markdown]
# ## Explore one prompt
#
# `focuslens.explore` puts the two knobs in one panel, for one prompt: `alpha` steers
# the chosen heads with these directions, `tau` applies the split-softmax oracle of
# notebook 02 to them (1 is off), and the head picker chooses the heads. Each change
# redraws where the chosen heads look, by document, and the model's greedy answer. The
# panel needs a running notebook; the numbers behind it come from
# `focuslens.evaluation.explore.explore_view`, a plain function.
#
# The prompt below is one of the test prompts that the model gets wrong unsteered and right
# at `alpha = 4` (the first such one, if any).

# %%
base, four = steered[0.0].to_dataframe(), steered[4.0].to_dataframe()
fixed = base.loc[four["correct"] & ~base["correct"], "example"]
example = int(fixed.iloc[0]) if len(fixed) else 0
panel = focuslens.explore(model, test[example], directions, heads=top)
panel

# %% [markdown]
# Move the sliders by hand, or from code as a lesson script would; each value change
# recomputes the view (`panel.view`) and redraws the panel:

# %%
print("start:  ", panel.history[0])
panel.alpha.value = 4.0
print("alpha 4:", panel.view)
panel.set(alpha=0.0, tau=0.1)
print("tau 0.1:", panel.view)

# %% [markdown]
# The panel starts unsteered, with a wrong answer (the prompt was chosen so). At
# `alpha = 4` the answer is right, though the chosen heads' attention on the relevant
# document hardly moves, as in the table above. Split-softmax at `tau = 0.1` more than
# doubles that attention and takes most of it off the distractors, yet here the answer
# stays wrong. Attention on the right document is not the whole story: split-softmax
# keeps how each head divides its attention inside the document, while a focus direction
# changes it (its bias depends on each key's content).

# %% [markdown]
# ## What next
#
# [04 · Your own model](04-your-own-model.ipynb) runs the same pipeline on a model loaded
# by name (GPT-2, Qwen, Llama) and on the authors' released directions.

# %% [markdown]
# # 01 · Contextual heads: which heads read the relevant document?
#
# A language model that answers a question from many documents must find the one document
# that holds the answer and ignore the rest. This notebook looks inside the model for the
# attention heads that do the reading, the **contextual heads** of *Focus Directions Make
# Your Language Models Pay More Attention to Relevant Contexts* (Zhu et al., 2025):
#
# 1. labelled prompts, and how their character spans become token spans;
# 2. the contextual score of a head, computed by hand and with `focuslens.contextual_scores`;
# 3. the layer x head map of scores, and the contextual heads;
# 4. where one head looks in one long prompt;
# 5. distraction: what happens to accuracy and to the heads' attention as documents are
#    added.
#
# Everything runs offline on the demo model shipped with focuslens, in a few minutes on a
# laptop CPU.

# %% [markdown]
# ## The demo model and its task

# %%
import torch

import focuslens
from focuslens.demo import DISTRACTING_DOCS
from focuslens.tasks import synthetic_retrieval

torch.set_num_threads(1)  # the demo model is tiny: one thread is fastest
model = focuslens.load_demo_model()
print(model.cfg.n_layers, "layers x", model.cfg.n_heads, "heads")

# %% [markdown]
# The demo model is a 3-layer, attention-only transformer with rotary embeddings and
# grouped-query attention (8 query heads sharing 4 key/value heads per layer), trained by
# `focuslens/demo/train.py` on a synthetic retrieval task. A prompt is a list of
# *documents*, each a two-word key and a two-word value, then a query naming one key; the
# model repeats the key, then gives that key's value (or `NONE` when no document has the
# key). Repeating the key works like the answer prefix of a chat model: the token that
# decides the answer, the first value word, is predicted on a row of the response. It was
# trained on 1 to 48 documents; `DISTRACTING_DOCS` is a number of documents, inside that
# range, at which it is distracted (see its model card, `focuslens/demo/MODEL_CARD.md`).

# %%
p = synthetic_retrieval(1, n_documents=4, seed=0)[0]
print(p.text)
print("answer:", p.answers, " response:", repr(p.response))
print("relevant document:", repr(p.text[slice(*p.relevant)]))
print("distractors:", [p.text[slice(*s)] for s in p.distractors])

# %% [markdown]
# ## Labelled prompts: from characters to tokens
#
# A `LabeledPrompt` holds the text and character spans: the `relevant` document, the
# `distractors`, and the `response` that follows the prompt (teacher forcing: the model
# reads the gold answer, and we watch the heads while it does). A document's span is its
# body `k k v v ]`: the key, the value and the closing bracket, on which the model gathers
# what the document says; the opening `[DOC` lies outside, like `Document [i]` in the
# paper's prompts.
#
# `focuslens.tokenize_prompt` maps the spans to tokens through the tokenizer's own
# character offsets, so the mapping is exact for any tokenizer, and adds the BOS token the
# model prepends:

# %%
import pandas as pd

tp = focuslens.tokenize_prompt(model, p)


def span_of(i):
    if tp.relevant[0] <= i < tp.relevant[1]:
        return "relevant"
    if any(s <= i < e for s, e in tp.distractors):
        return "distractor"
    return "response" if i >= tp.n_prompt else ""


tokens = model.tokenizer.convert_ids_to_tokens(tp.tokens.tolist())
pd.DataFrame({"token": tokens, "span": [span_of(i) for i in range(len(tp))]})

# %% [markdown]
# ## The contextual score, by hand
#
# For one prompt and one head, with attention pattern `A[i, j]` (query `i`, key `j`), the
# query rows `R` of the response and the relevant span `S`:
#
#     score = mean over i in R of ( sum over j in S of A[i, j] )
#
# the share of its attention the head gives to the relevant document while the answer is
# written. Here it is by hand, from TransformerLens's full activation cache, for every
# head of the last layer:

# %%
_, cache = model.run_with_cache(tp.tokens[None])
rows = list(range(tp.n_prompt, len(tp)))  # the response tokens' own positions
s, e = tp.relevant
layer = model.cfg.n_layers - 1
pattern = cache["pattern", layer][0]  # [head, query, key]
by_hand = pattern[:, rows, s:e].sum(-1).mean(-1)
print("by hand:          ", by_hand.numpy().round(4))
scores_one = focuslens.contextual_scores(model, [p])
print("contextual_scores:", scores_one.relevant[layer].numpy().round(4))

# %% [markdown]
# Same numbers, but `contextual_scores` never builds that cache: inside each layer's
# `hook_pattern` hook it keeps only the sums over spans of the response rows, so it costs
# what a forward pass costs, also for long prompts and big models. The same pass gives
# the mass on the distractors (all of them, and the largest single one), on the *sink*
# (the first tokens, where heads park attention they do not need) and on the rest:

# %%
scores_one.to_dataframe().query("layer == @layer").pivot(
    index="head", columns="kind", values="score"
).round(3)

# %% [markdown]
# ## Contextual heads on many prompts
#
# One prompt is noise. Averaged over prompts with many distracting documents, the scores
# single out the heads that read the relevant document; the top ones are the contextual
# heads. `focuslens.plots.head_scores` draws layer x head maps (the top heads are marked);
# every figure in focuslens is a plotly figure, returned and never shown by the library.

# %%
train = synthetic_retrieval(48, n_documents=DISTRACTING_DOCS, seed=0)
scores = focuslens.contextual_scores(model, train)
top = scores.top_heads(3)
print("contextual heads, best first:", top)
focuslens.plots.head_scores(scores, ["relevant", "distractor_max", "sink"], top_k=3)

# %% [markdown]
# In a notebook, a result that ends a cell shows itself: its key numbers and a small
# figure. The figure works offline: plotly's JavaScript comes from the package with the
# first result shown in a session, never from the network. `print(scores)` gives the
# one-line text form used in a terminal.

# %%
print(scores)
scores

# %% [markdown]
# Only a few heads score high: they read the relevant document while the answer is
# written; the others look at the distractors, the query or the sink. Compare a head's
# relevant score with the largest single distractor (`distractor_max`): a contextual head
# gives the relevant document far more than any one distractor.
#
# The same scores on the *gold-only* prompts (only the relevant document) show how much
# attention the distractors take away from it:

# %%
gold = focuslens.contextual_scores(model, [q.gold_only() for q in train])
pd.DataFrame(
    {
        "head": [f"L{l}H{h}" for l, h in top],
        f"relevant, {DISTRACTING_DOCS} documents": [float(scores.relevant[l, h]) for l, h in top],
        "largest distractor": [float(scores.distractor_max[l, h]) for l, h in top],
        "relevant, gold only": [float(gold.relevant[l, h]) for l, h in top],
    }
).round(3)

# %% [markdown]
# ## Where one head looks
#
# `focuslens.plots.attention_map` runs one prompt and keeps the attention rows of the
# answer tokens for the chosen heads (never the full pattern). With many documents it sums
# each row per document; the bars below the heatmap are the mean over answer rows,
# coloured by span kind. The dropdown switches heads.

# %%
focuslens.plots.attention_map(model, train[0], top, level="documents")

# %% [markdown]
# Zoomed on the relevant document, token by token (`window='relevant'` shows it with 8 tokens of context on each side):

# %%
focuslens.plots.attention_map(model, train[0], top, window="relevant")

# %% [markdown]
# ## Distraction as documents are added
#
# The model was trained on 1 to 48 documents. `focuslens.evaluate` answers each prompt
# greedily, scores the answer, and, with `heads=`, measures where those heads looked while
# answering (`attn_relevant`, `attn_distractors`, `attn_sink`, `attn_other`). Watch
# accuracy and the contextual heads' attention to the relevant document as the number of
# documents grows:

# %%
sizes = [4, 16, 24, 32, 40, 48]
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
).round(3)

# %%
focuslens.plots.accuracy_curves(
    {"demo model": by_size}, x="n_documents", title="Accuracy against the number of documents"
)

# %% [markdown]
# Twenty prompts per point make wide intervals (the error bars are 95 % Wilson
# intervals); raise the number in the cell above for tighter ones. Every length here is
# inside the model's training range. With 4 documents it is always right and its
# contextual heads give the relevant document about half of their attention; as
# documents are added, accuracy falls (to 0.6 at 40 and 0.4 at 48 documents here) and so
# does that attention, which moves to the distractors. This is the paper's phenomenon in
# miniature: the number of competing documents distracts the heads that read.
#
# Where the relevant document sits matters too ("lost in the middle", Liu et al. 2024).
# `gold_position=` places it first, in the middle or last:

# %%
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
)

# %% [markdown]
# On the demo model the curve is the opposite of the paper's U: the relevant document is
# found best in the middle and worst at either end (0.3, 0.7 and 0.2 here on 20 prompts
# each; the model card measures 0.30, 0.59 and 0.32 on 300). The model was trained with
# the relevant document anywhere, so this is not about distances it never saw.
#
# ## What next
#
# * [02 · Do they matter?](02-do-they-matter.ipynb): ablate the contextual heads, compare
#   them with retrieval heads, and give them more attention on the relevant document with
#   the split-softmax oracle, against random heads.
# * The API behind this notebook: `focuslens.contextual_scores` (options `query=`,
#   `sink=`, `batch_size=`), `focuslens.evaluate`, `focuslens.plots`.

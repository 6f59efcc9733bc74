# %% [markdown]
# # 04 · Your own model, and the authors' released directions
#
# The same pipeline as notebooks 01-03, on a model you load by name and on natural-language
# multi-document questions:
#
# 1. load a model and check that its hooks behave as focuslens needs;
# 2. build labelled multi-document QA prompts (with the model's chat template);
# 3. baseline and gold-only accuracy, contextual scores, the contextual heads;
# 4. learn focus directions and steer with them;
# 5. import the authors' released directions and steer with those.
#
# **This notebook needs weights you download.** Set the parameters below: a model name
# TransformerLens knows (its weights in your Hugging Face cache, e.g. after
# `huggingface-cli download meta-llama/Llama-3.2-3B-Instruct`). For part 5, the authors'
# released directions for Llama-3.2-3B-Instruct, Qwen2.5-7B-Instruct and
# Ministral-8B-Instruct-2410 ship with focuslens (`FocusDirections.pretrained`); for
# another model, set `RELEASE_DIR` to a folder in the release's layout.
#
# **What the tests run.** focuslens's tests execute this notebook offline with
# `SMOKE_TEST = True`: the model is then a small *random* model of the Llama family's
# architecture (rotary, grouped-query attention) and the "release" is random vectors in
# the release's file layout, both built by `notebooks/_offline.py`. A random model answers
# nothing correctly and its heads mean nothing; the smoke test only checks that every cell
# runs.

# %% tags=["parameters"]
# parameters
MODEL_NAME = "meta-llama/Llama-3.2-3B-Instruct"  # any name TransformerLens knows
RELEASE_DIR = None  # a folder in the release's layout; None: the shipped release, by name
N_HEADS = 20  # contextual heads to steer (the authors' default)
ALPHA = 0.3  # steering strength (the authors use 0.2 or 0.3 with 20 heads)
MAX_NEW_TOKENS = 32
SMOKE_TEST = False  # True: offline random stand-ins for the model and the release

# %% [markdown]
# ## 1 · The model
#
# `focuslens.model.loading.load_model` loads a `HookedTransformer` by name (or the demo model,
# `"demo"`), offline when the weights are cached. `check_backend` then checks, on the
# model itself, the hook behaviour focuslens relies on (pattern rows sum to one, scores
# are pre-softmax, writes to the pattern take effect, ...).

# %%
import focuslens
from focuslens.model.loading import check_backend, load_model

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
print(check_backend(model))

# %% [markdown]
# ## 2 · Labelled multi-document questions
#
# `focuslens.tasks.qa_prompt` writes the "lost in the middle" prompt the paper uses (an
# instruction, numbered documents, the question) with the gold document at a chosen
# position, and labels its span. With `chat_template=model.tokenizer` the prompt becomes
# the user turn of the model's chat template, as for the paper's instruction-tuned models.
# Below, a handful of questions written for this notebook; for the paper's setting, load
# NQ-Open with `focuslens.tasks.load_lost_in_the_middle(path)` (20 documents, gold at 0, 4,
# 9, 14 or 19).

# %%
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
print(prompts[0].text)

# %% [markdown]
# If the chat template writes the BOS token itself (Llama 3's does) and the model also
# prepends one, the prompt would start with two. Check the first tokens, and if you see
# two BOS tokens set `model.cfg.default_prepend_bos = False` (see the how-to on batching
# and chat templates):

# %%
tp = focuslens.tokenize_prompt(model, prompts[0])
print(model.tokenizer.convert_ids_to_tokens(tp.tokens[:4].tolist()))

# %% [markdown]
# ## 3 · Accuracy and contextual heads
#
# Accuracy is the paper's *best subspan exact match* (a gold answer, normalised, occurs in
# the normalised prediction). The scores follow the authors' recipe: the model first
# answers each prompt greedily, then one teacher-forced pass over prompt + answer measures
# each head's attention mass on the gold document from the answer's tokens.

# %%
from focuslens.model.generation import generate_greedy

kw = {"max_new_tokens": MAX_NEW_TOKENS, "progress": False}
baseline = focuslens.evaluate(model, prompts, **kw)
gold_only = focuslens.evaluate(model, [p.gold_only() for p in prompts], **kw)
print(f"baseline {baseline.accuracy:.2f}, gold only {gold_only.accuracy:.2f} (n={baseline.n})")
baseline.to_dataframe()[["prediction", "answers", "correct", "gold_position"]]


# %%
def answered(prompt):
    tp = focuslens.tokenize_prompt(model, prompt)
    text = generate_greedy(model, tp.tokens, max_new_tokens=MAX_NEW_TOKENS).text
    return prompt.with_response(text if text.strip() else " " + prompt.answers[0])


scored = [answered(p) for p in prompts]
scores = focuslens.contextual_scores(model, scored, batch_size=2)
heads = scores.top_heads(N_HEADS)
print("top contextual heads:", heads[:10])
scores.figure()

# %% [markdown]
# ## 4 · Focus directions on your model
#
# Learning needs labelled prompts, as many as you can afford (the authors use half of
# their NQ-Open prompts); a handful shows the mechanics. Evaluate on other prompts than
# those you learn on.

# %%
learned = focuslens.learn_focus_directions(
    model, prompts, heads=heads, epochs=2, max_new_tokens=MAX_NEW_TOKENS
)
steered = focuslens.evaluate(
    model, prompts, intervention=learned.steering(heads, ALPHA), heads=heads[:4], **kw
)
print(f"steered with learned directions (alpha={ALPHA}): accuracy {steered.accuracy:.2f}")
steered.to_dataframe()[["prediction", "correct", "attn_relevant", "attn_sink"]]

# %% [markdown]
# ## 5 · The authors' released directions
#
# For the three released models, `FocusDirections.pretrained(MODEL_NAME, model)` loads
# the directions and ranked heads shipped with focuslens (no download). For a folder in
# the release's layout, `FocusDirections.from_release` reads its per-layer
# `head_{q,k}_directions_{layer}.pth` files with `torch.load(..., weights_only=True)` (no
# code is unpickled) and its ranked `relevant_heads.json`. Both check every shape against
# the model, naming both when they differ. Their heads are the authors' contextual heads,
# best first; steer the top `N_HEADS` with `ALPHA`, as in the paper.

# %%
from pathlib import Path

from focuslens.directions.pretrained import pretrained_name

released = None
if RELEASE_DIR is not None and Path(RELEASE_DIR).is_dir():
    released = focuslens.FocusDirections.from_release(RELEASE_DIR, model)
else:
    try:
        known = pretrained_name(MODEL_NAME)
    except ValueError as exc:
        known = None
        print(f"no released directions: {exc}; set RELEASE_DIR to a release folder")
    if known is not None:
        released = focuslens.FocusDirections.pretrained(known, model)
if released is not None:
    print(released)
    print("the authors' top heads:", released.top_heads(5))
    overlap = set(released.top_heads(N_HEADS)) & set(heads)
    print(f"{len(overlap)} of the top {N_HEADS} heads are also among those found here")
    with_release = focuslens.evaluate(
        model, prompts, intervention=released.steering(N_HEADS, ALPHA), **kw
    )
    print(f"steered with the released directions: accuracy {with_release.accuracy:.2f}")

# %% [markdown]
# Save what you learned to share it (`learned.save("my-model.safetensors")`), and write
# everything into one report with the command line: `focuslens scores|learn|eval|steer
# --model MODEL_NAME ...` then `focuslens report RUN` (see the CLI reference).

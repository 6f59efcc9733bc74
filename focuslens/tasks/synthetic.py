"""Synthetic key-value retrieval with distractors: the task of the shipped demo model.

A prompt is a list of *documents*, each a two-word key and a two-word value, followed
by a query that names one key. The answer first repeats the queried key, then gives
that key's value; when the key is in no document (an *absent-key* query) the value is
``NONE``::

    [DOC k3 k17 v40 v8 ] [DOC k51 k2 v9 v33 ] [Q k51 k2  ->  k51 k2 v9 v33 <eos>

Everything is a word of the demo model's word-level vocabulary (:data:`VOCAB`), so a
prompt tokenises one token per word: ``1 + 6 * n_documents + 3`` tokens with BOS.
Keys and values are distinct within a prompt; up to 32 documents no value word appears
twice either (beyond, value words repeat across documents, which makes the second
answer word harder for a model that finds it by induction on the first).

Why the answer repeats the key. The echoed key works like the answer prefix a chat
model writes before its answer ("The value of k51 k2 is ..."): the prediction that
decides the answer, the first value word, is made on the row of the echoed key's last
word, which is a *response* row. So the default query rows of the contextual scores
(``query="response"``, the answer tokens' own rows) contain the decisive one. Without
the echo, the first value word is predicted at the last prompt token, a row the
response rows miss.

Spans. The labelled span of a document is its body ``k k v v ]``: the key, the value
**and the closing delimiter** ``]``; the opening ``[DOC`` lies outside, as
``Document [i]`` does in the paper's prompts. The closing delimiter belongs to the
span because a transformer gathers a document's content on its last token: at the
decisive row the demo model's contextual heads read the gold document from its ``]``
(MODEL_CARD.md measures it). The same holds for real models, which also collect a
passage on its delimiters: keep the delimiter that closes a passage inside its span.

Responses. ``prompt.response`` is the gold answer as the model's greedy answer
decodes (``"k51 k2 v9 v33"``, ``"k51 k2 NONE"``), which is also what
:func:`focuslens.evaluate` teacher-forces when it measures attention. The model ends
every answer with :data:`EOS` (``"<eos>"``, the demo tokenizer's ``eos_token``), so
generation stops on it; the marker is left out of the response because its row would
predict the token after the answer, which the model was never trained on.
``prompt.answers`` holds the same answer (exact match: the echoed key must be right
too); ``prompt.meta`` sets ``metric="exact"`` and ``max_new_tokens=5``
(:data:`ANSWER_TOKENS`: the key, the value and ``<eos>``) for :func:`focuslens.evaluate`.

Which option for what:

* ``n_documents`` and ``gold_position`` give the accuracy-vs-length and the
  lost-in-the-middle curves;
* ``similar`` makes distractors whose key shares one word with the queried key (harder,
  and a test of whether a head matches the whole key);
* ``absent`` adds queries whose key is in no document (answer ``NONE``); they carry
  ``relevant=None``, so functions that need a relevant span refuse them.
"""

from __future__ import annotations

import numbers
import random
from collections.abc import Sequence

from focuslens.prompts.spans import LabeledPrompt, assemble

N_KEY_WORDS = 64
"""Number of key words ``k0 .. k63``."""

N_VALUE_WORDS = 64
"""Number of value words ``v0 .. v63``."""

KEY_LEN = 2
"""Words per key."""

VALUE_LEN = 2
"""Words per value."""

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
DOC_OPEN, DOC_CLOSE, QUERY, NONE = "[DOC", "]", "[Q", "NONE"

KEY_WORDS = tuple(f"k{i}" for i in range(N_KEY_WORDS))
VALUE_WORDS = tuple(f"v{i}" for i in range(N_VALUE_WORDS))

SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
"""Special tokens of the demo tokenizer, ids 0-3."""

VOCAB = (*SPECIAL_TOKENS, DOC_OPEN, DOC_CLOSE, QUERY, NONE, *KEY_WORDS, *VALUE_WORDS)
"""The demo model's vocabulary, in id order."""

DOC_TOKENS = 1 + KEY_LEN + VALUE_LEN + 1
"""Tokens per document: ``[DOC``, key, value, ``]``."""

QUERY_TOKENS = 1 + KEY_LEN
"""Tokens of the query at the end of the prompt: ``[Q`` and the key."""

ANSWER_TOKENS = KEY_LEN + VALUE_LEN + 1
"""Most tokens of an answer: the echoed key, the value and ``<eos>``."""

MAX_SIMILAR = KEY_LEN * (N_KEY_WORDS - 1)
"""Most distinct keys that share exactly one word (at the same place) with a given key."""

UNIQUE_VALUE_DOCS = N_VALUE_WORDS // VALUE_LEN
"""Up to this many documents (32), no value word appears twice in a prompt."""

MAX_DOCUMENTS = (N_KEY_WORDS - 1) ** 2
"""Most documents a prompt can hold with distinct keys that share no word with the query."""

GOLD_POSITIONS = ("first", "middle", "last", "random")

Key = tuple[str, ...]


def prompt_length(n_documents: int) -> int:
    """Number of prompt tokens, BOS included, of a prompt with ``n_documents`` documents."""
    return 1 + DOC_TOKENS * n_documents + QUERY_TOKENS


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_options(
    n: numbers.Integral, n_documents: numbers.Integral, gold_position: str | numbers.Integral
) -> tuple[int, int, str | int]:
    """Validated ``(n, n_documents, gold_position)``, integers as plain ints."""
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not _is_int(n_documents):
        raise ValueError(f"n_documents must be an int, got {n_documents!r}")
    if not 1 <= n_documents <= MAX_DOCUMENTS:
        raise ValueError(f"n_documents must be in [1, {MAX_DOCUMENTS}], got {n_documents}")
    if not (_is_int(gold_position) or gold_position in GOLD_POSITIONS):
        raise ValueError(
            f"gold_position must be one of {GOLD_POSITIONS} or an int, got {gold_position!r}"
        )
    if _is_int(gold_position):
        if not 0 <= gold_position < n_documents:
            raise ValueError(
                f"gold_position {gold_position} is out of range for n_documents={n_documents} "
                f"(0-based, so 0 to {n_documents - 1})"
            )
        gold_position = int(gold_position)
    return int(n), int(n_documents), gold_position


def resolve_gold_position(gold_position: str | int, n_documents: int, rng: random.Random) -> int:
    """The 0-based gold index for a ``gold_position`` option ("middle" is ``(n - 1) // 2``)."""
    if gold_position == "first":
        return 0
    if gold_position == "middle":
        return (n_documents - 1) // 2
    if gold_position == "last":
        return n_documents - 1
    if gold_position == "random":
        return rng.randrange(n_documents)
    return int(gold_position)


def random_key(rng: random.Random) -> Key:
    """A key of :data:`KEY_LEN` words drawn uniformly."""
    return tuple(rng.choice(KEY_WORDS) for _ in range(KEY_LEN))


def distractor_keys(rng: random.Random, query: Key, n: int, n_similar: int) -> list[Key]:
    """``n`` distinct keys, none equal to ``query``, in random order.

    ``n_similar`` of them share exactly one word (at the same place) with ``query``; the
    others share no word with it at any place.
    """
    if n_similar > MAX_SIMILAR:
        raise ValueError(
            f"{n_similar} distractors cannot all share one word with the key {query}: at "
            f"most {MAX_SIMILAR} distinct keys can; lower `similar` or `n_documents`"
        )
    keys: set[Key] = set()
    out: list[Key] = []
    while len(out) < n:
        similar = len(out) < n_similar
        shared = rng.randrange(KEY_LEN) if similar else -1
        key = tuple(
            query[i] if i == shared else rng.choice([w for w in KEY_WORDS if w != query[i]])
            for i in range(KEY_LEN)
        )
        if key not in keys:
            keys.add(key)
            out.append(key)
    rng.shuffle(out)
    return out


def distinct_values(rng: random.Random, n: int) -> list[Key]:
    """``n`` distinct values of :data:`VALUE_LEN` words.

    Up to :data:`UNIQUE_VALUE_DOCS` values no word is used twice (so the word after a
    value's first word is determined by it); beyond, words repeat across values.
    """
    if n <= UNIQUE_VALUE_DOCS:
        words = rng.sample(VALUE_WORDS, n * VALUE_LEN)
        return [tuple(words[i : i + VALUE_LEN]) for i in range(0, len(words), VALUE_LEN)]
    seen: set[Key] = set()
    out: list[Key] = []
    while len(out) < n:
        value = tuple(rng.choice(VALUE_WORDS) for _ in range(VALUE_LEN))
        if value not in seen:
            seen.add(value)
            out.append(value)
    return out


def build_prompt(
    keys: Sequence[Key],
    values: Sequence[Key],
    query: Key,
    gold_index: int | None,
    meta: dict | None = None,
) -> LabeledPrompt:
    """The labelled prompt for given documents and query (see the module docstring).

    Args:
        keys: One key per document.
        values: One value per document.
        query: The queried key.
        gold_index: Index of the document whose key is ``query``, or ``None`` (absent).
        meta: Extra metadata; ``metric="exact"``, ``max_new_tokens`` (the echoed key,
            the value and the end marker) and ``key`` are added.
    """
    if len(keys) != len(values):
        raise ValueError(f"{len(keys)} keys for {len(values)} values")
    if gold_index is None:
        if tuple(query) in {tuple(k) for k in keys}:
            raise ValueError(f"query {query} is among the keys but gold_index is None")
        answer = " ".join([*query, NONE])
    else:
        if tuple(keys[gold_index]) != tuple(query):
            raise ValueError(f"query {query} differs from the gold key {keys[gold_index]}")
        answer = " ".join([*query, *values[gold_index]])
    bodies = [" ".join([*k, *v, DOC_CLOSE]) for k, v in zip(keys, values)]
    info = {
        "metric": "exact",
        "max_new_tokens": ANSWER_TOKENS,
        "key": " ".join(query),
        **(meta or {}),
    }
    footer = " " + " ".join([QUERY, *query])
    start = len(f" {QUERY} ")
    return assemble(
        header="",
        prefixes=[f"{DOC_OPEN} "] * len(bodies),
        bodies=bodies,
        gold_index=gold_index,
        footer=footer,
        answers=[answer],
        separator=" ",
        response=answer,
        meta=info,
        named=[("query", "footer", start, len(footer))] if query else [],
    )


def synthetic_retrieval(
    n: numbers.Integral,
    *,
    n_documents: numbers.Integral,
    gold_position: str | numbers.Integral = "random",
    absent: numbers.Real = 0.0,
    seed: numbers.Integral = 0,
    similar: numbers.Real = 0.0,
) -> list[LabeledPrompt]:
    """``n`` key-value retrieval prompts for the demo model.

    Args:
        n: Number of prompts.
        n_documents: Documents per prompt (1 to :data:`MAX_DOCUMENTS`).
        gold_position: Where the relevant document is: ``"first"``, ``"middle"``
            (index ``(n_documents - 1) // 2``), ``"last"``, ``"random"`` (uniform, per
            prompt) or a 0-based index.
        absent: Fraction of prompts whose queried key is in no document (answer
            ``NONE``, ``relevant=None``); exactly ``round(absent * n)`` prompts, at
            random places in the list.
        seed: Seed; the same arguments give the same prompts.
        similar: Fraction of a prompt's distractors (``round(similar * n_distractors)``)
            whose key shares one word, at the same place, with the queried key. The other
            distractors share no key word with it.

    Returns:
        ``n`` prompts. ``meta`` holds ``metric`` ("exact"), ``max_new_tokens`` (5: the
        echoed key, the value and ``<eos>``), ``task``, ``index``, ``seed``,
        ``n_documents``, ``gold_position`` (0-based, ``None`` when absent), ``absent``,
        ``key``, ``n_similar`` and ``n_prompt_tokens`` (BOS included).

    Example:
        >>> p = synthetic_retrieval(1, n_documents=3, gold_position="last", seed=1)[0]
        >>> p.text[p.relevant[0]:p.relevant[1]].endswith("]"), p.meta["gold_position"]
        (True, 2)
        >>> p.text[p.relevant[0]:p.relevant[1]], p.response, p.answers
        ('k34 k6 v10 v28 ]', 'k34 k6 v10 v28', ['k34 k6 v10 v28'])
    """
    n, n_documents, gold_position = _check_options(n, n_documents, gold_position)
    absent = _check_fraction("absent", absent)
    similar = _check_fraction("similar", similar)
    rng = random.Random(f"focuslens.synthetic_retrieval:{seed}")
    absent_ids = set(rng.sample(range(n), round(absent * n)))
    prompts = []
    for index in range(n):
        is_absent = index in absent_ids
        query = random_key(rng)
        n_distractors = n_documents if is_absent else n_documents - 1
        n_similar = round(similar * n_distractors)
        keys = distractor_keys(rng, query, n_distractors, n_similar)
        gold = None
        if not is_absent:
            gold = resolve_gold_position(gold_position, n_documents, rng)
            keys.insert(gold, query)
        values = distinct_values(rng, n_documents)
        meta = {
            "task": "synthetic_retrieval",
            "index": index,
            "seed": seed,
            "n_documents": n_documents,
            "gold_position": gold,
            "absent": is_absent,
            "n_similar": n_similar,
            "n_prompt_tokens": prompt_length(n_documents),
        }
        prompts.append(build_prompt(keys, values, query, gold, meta))
    return prompts


__all__ = [
    "ANSWER_TOKENS",
    "BOS",
    "DOC_CLOSE",
    "DOC_OPEN",
    "EOS",
    "NONE",
    "PAD",
    "QUERY",
    "UNK",
    "VOCAB",
    "prompt_length",
    "synthetic_retrieval",
]

"""Results in a notebook: ``_repr_html_`` cards (offline, plotly's JavaScript once per
kernel, numbers checked against independent computations) and plain ``__repr__``."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pandas as pd
import pytest
import torch
from _oracles import make_prompts, naive_scores
from _tiny import tiny_model
from plotly.offline import get_plotlyjs

from focuslens import FocusDirections, contextual_scores, tokenize_prompt
from focuslens.evaluation.accuracy import EvalResult
from focuslens.heads import HeadScores
from focuslens.interventions.effects import HeadEffects
from focuslens.plots import notebook
from focuslens.scores.attention import attention_map_data

HEADS = [(1, 2), (0, 1)]


class Tables(HTMLParser):
    """Every ``<table>`` of a page as a list of rows of cell texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def numbers(text: str) -> dict[str, str]:
    """The card's key-number table, label -> shown value."""
    return dict(row for row in Tables(text).tables[0] if len(row) == 2)


def shown(value: float) -> str:
    return f"{value:.4g}"


@pytest.fixture(scope="module")
def model():
    return tiny_model("gqa")


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(4)


@pytest.fixture(autouse=True)
def fresh_kernel():
    notebook.include_plotlyjs_again()  # each test starts as a fresh kernel would
    yield
    notebook.include_plotlyjs_again()


def test_plotlyjs_inline_once_and_never_from_the_network(model, prompts):
    scores = contextual_scores(model, prompts)
    first, second = scores._repr_html_(), scores._repr_html_()
    bundle = get_plotlyjs()
    assert first.count(bundle) == 1 and bundle not in second
    assert len(first) > len(bundle) > 1_000_000 and len(second) < 100_000
    for text in (first, second):
        assert "<script src" not in text and "cdn.plot.ly" not in text.replace(bundle, "")
        assert text.count("Plotly.newPlot(") == 1 and 'class="focuslens-result"' in text
    # The figure divs are unique, so that two cards of one notebook never collide.
    ids = [t.split('id="focuslens-')[1].split('"')[0] for t in (first, second)]
    assert ids[0] != ids[1]
    notebook.include_plotlyjs_again()
    assert bundle in scores._repr_html_()


def test_contextual_scores_card_against_the_full_cache(model, prompts):
    scores = contextual_scores(model, prompts)
    text = scores._repr_html_()
    oracle = naive_scores(model, prompts)  # full attention caches, one prompt at a time
    relevant = torch.nanmean(oracle["relevant"], 0)
    table = Tables(text).tables[1]
    assert table[0] == ["head", "relevant", "distractors", "sink"]
    flat = relevant.flatten()
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:5]
    n_heads = relevant.shape[1]
    assert [row[0] for row in table[1:]] == [f"L{i // n_heads}H{i % n_heads}" for i in order]
    for row, i in zip(table[1:], order):
        layer, head = divmod(i, n_heads)
        expected = [relevant[layer, head]]
        expected += [oracle[k].mean(0)[layer, head] for k in ("distractors", "sink")]
        for cell, value in zip(row[1:], expected):
            assert math.isclose(float(cell), float(value), rel_tol=1e-3, abs_tol=1e-6)
    key = numbers(text)
    assert key["layers x heads"] == "2 x 4" and key["examples"] == "4"
    assert math.isclose(
        float(key["mean relevant mass (all heads)"]), float(relevant.mean()), rel_tol=1e-3
    )


def test_head_scores_and_effects_cards_rank_signed_values_by_size():
    values = torch.tensor([[0.1, -0.9, float("nan")], [0.5, -0.2, 0.05]])
    effects = HeadEffects(values, per_example=values[None].repeat(3, 1, 1))
    text = effects._repr_html_()
    table = Tables(text).tables[1]
    assert [row[0] for row in table[1:]] == ["L0H1", "L1H0", "L1H1", "L0H0", "L1H2"]
    assert [float(row[1]) for row in table[1:]] == [-0.9, 0.5, -0.2, 0.1, 0.05]
    key = numbers(text)
    assert key["heads measured"] == "5" and key["examples"] == "3" and key["method"] == "ablation"
    positive = HeadScores(values.abs().nan_to_num(0.0), name="<retrieval>")
    text = positive._repr_html_()
    assert "&lt;retrieval&gt;" in text and "<retrieval>" not in text  # escaped
    assert Tables(text).tables[1][1][0] == "L0H1"
    assert "-0.9" not in text.split("Plotly.newPlot")[0]


def test_eval_result_card_accuracy_interval_and_attention():
    frame = pd.DataFrame(
        {
            "example": range(6),
            "prediction": ["a <b>", "b", "c", "d", "e", "f"],
            "answers": [["a"], ["b"], ["c"], ["d"], ["e"], ["g"]],
            "correct": [True] * 5 + [False],
            "gold_position": [0, 0, 1, 1, 2, 2],
            "n_documents": [3] * 6,
            "attn_relevant": [0.5, 0.7, 0.2, 0.4, 0.1, float("nan")],
            "attn_sink": [0.1] * 6,
        }
    )
    result = EvalResult(frame, heads=[(0, 1)])
    text = result._repr_html_()
    key = numbers(text)
    # Wilson interval of 5/6 by hand (z for 95 %): centre +- half, over 1 + z^2/n.
    z, n, p = 1.959963984540054, 6, 5 / 6
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert key["accuracy"] == shown(5 / 6) and key["examples"] == "6"
    assert key["95% interval"] == f"{centre - half:.3f} to {centre + half:.3f}"
    assert key["attention on relevant"] == shown((0.5 + 0.7 + 0.2 + 0.4 + 0.1) / 5)
    assert key["heads measured"] == "L0H1"
    answers = Tables(text).tables[1]
    assert answers[0] == ["prediction", "answers", "correct"] and len(answers) == 6
    assert "a &lt;b&gt;" in text and "Plotly.newPlot(" in text


def test_directions_card_shape_heads_norms():
    fd = FocusDirections.pretrained("meta-llama/Llama-3.2-3B-Instruct")
    text = fd._repr_html_()
    key = numbers(text)
    assert key["model shape"] == str(fd.shape) and key["ranked heads"] == "672"
    assert key["top heads"] == "L13H23, L12H1, L15H18, L15H22, L14H2"
    per_head = torch.linalg.vector_norm(fd.d_q.double(), dim=-1)
    assert key["mean |d_q| per head"] == shown(float(per_head.mean()))
    top20 = [per_head[layer, head] for layer, head in fd.heads[:20]]
    assert key["mean |d_q|, top 20 heads"] == shown(float(sum(top20) / 20))
    assert key["training: method"] == "release" and "billzyx" in key["source"]
    assert len(text) < 200_000 or get_plotlyjs() in text


def test_attention_map_card_against_the_pattern(model, prompts):
    amap = attention_map_data(model, prompts[0], HEADS)
    text = amap._repr_html_()
    tp = tokenize_prompt(model, prompts[0])
    _, cache = model.run_with_cache(tp.tokens[None], names_filter=lambda n: "pattern" in n)
    rows = Tables(text).tables[1]
    assert rows[0] == ["head", "relevant mass", "distractor mass", "sink mass"]
    for (layer, head), row in zip(HEADS, rows[1:]):
        a = cache["pattern", layer][0, head, tp.n_prompt :, :]  # the answer rows
        rel = a[:, tp.relevant[0] : tp.relevant[1]].sum(-1).mean()
        dis = sum(a[:, s:e].sum(-1) for s, e in tp.distractors).mean()
        assert row[0] == f"L{layer}H{head}"
        assert math.isclose(float(row[1]), float(rel), rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(float(row[2]), float(dis), rel_tol=1e-3, abs_tol=1e-6)
    assert numbers(text)["answer rows"] == str(len(tp) - tp.n_prompt)


def test_plain_reprs_are_one_line(model, prompts):
    amap = attention_map_data(model, prompts[0], HEADS)
    values = HeadScores(torch.zeros(2, 3), per_example=torch.zeros(5, 2, 3), name="effect")
    for obj, start in (
        (amap, "AttentionMap(heads=[L1H2, L0H1], rows="),
        (values, "HeadScores(name='effect', shape=(2, 3), n_examples=5)"),
        (contextual_scores(model, prompts), "ContextualScores(n_layers=2"),
    ):
        text = repr(obj)
        assert text.startswith(start) and "\n" not in text and "tensor(" not in text


def test_contextual_scores_card_without_relevant_spans():
    """Prompts without a relevant document leave NaN relevant scores: the card still shows
    the numbers it has, and no figure."""
    from focuslens.scores.result import KINDS, ContextualScores

    per_example = {k: torch.rand(2, 2, 3) for k in KINDS}
    per_example["relevant"] = torch.full((2, 2, 3), float("nan"))
    scores = ContextualScores.from_per_example(per_example)
    text = scores._repr_html_()
    assert numbers(text)["best head"] == "" and "Plotly.newPlot(" not in text
    assert numbers(text)["examples"] == "2"
    assert repr(scores).endswith("top=[])")  # the plain repr too

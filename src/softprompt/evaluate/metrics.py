"""Metrics as small pure functions: classification (accuracy, macro-F1, confusion matrix) and
generation (exact match, ROUGE-L, BLEU-4).

Text is split into words, except Chinese/Japanese/Korean characters, which count one token
each: the usual way to score CJK text without a word segmenter, so ``alpaca_zh_demo`` scores
mean something (LLaMA-Factory segments with jieba; character n-grams need no dictionary).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_CJK = (
    "\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
)
_WORD = re.compile(rf"[{_CJK}]|\w+|[^\w\s]")


# --------------------------------------------------------------------------------------------
# classification


def accuracy(preds: Sequence[str], golds: Sequence[str]) -> float:
    """Fraction of positions where ``preds[i] == golds[i]`` (0.0 for empty input)."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} references")
    return sum(p == g for p, g in zip(preds, golds)) / len(golds) if golds else 0.0


def confusion_matrix(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """``m[i][j]``: how many examples of gold ``labels[i]`` were predicted ``labels[j]``.

    Gold labels outside ``labels`` are left out of the matrix (they still count as errors in
    :func:`accuracy`).
    """
    index = {label: i for i, label in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for p, g in zip(preds, golds):
        if g in index and p in index:
            m[index[g]][index[p]] += 1
    return m


def macro_f1(preds: Sequence[str], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean over ``labels`` of each label's F1 (2PR / (P + R); 0 where undefined)."""
    if not labels:
        return 0.0
    total = 0.0
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(preds, golds))
        n_pred = sum(p == label for p in preds)
        n_gold = sum(g == label for g in golds)
        if tp:
            precision, recall = tp / n_pred, tp / n_gold
            total += 2 * precision * recall / (precision + recall)
    return total / len(labels)


# --------------------------------------------------------------------------------------------
# generation


def segment(text: str) -> list[str]:
    """Lower-cased tokens of ``text``: words, punctuation marks, and single CJK characters.

    ``segment("Hello, world")`` -> ``["hello", ",", "world"]``; ``segment("我爱北京")`` ->
    ``["我", "爱", "北", "京"]``.
    """
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """Text for exact match: lower case, whitespace collapsed, surrounding punctuation stripped."""
    return " ".join(text.lower().split()).strip(string.punctuation + " 。，！？、；：")


def exact_match(pred: str, ref: str) -> float:
    """1.0 if the two texts are equal after :func:`normalize`, else 0.0."""
    return float(normalize(pred) == normalize(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 of one prediction against one reference: LCS-based precision and recall."""
    p, r = segment(pred), segment(ref)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(preds: Sequence[str], refs: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002), one reference each, in [0, 1], no smoothing.

    Geometric mean of the clipped n-gram precisions (n = 1..max_n, counts summed over the
    corpus) times the brevity penalty ``exp(1 - ref_len / pred_len)`` when the predictions
    are shorter in total. 0.0 when some order has no match.
    """
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs):
        p, r = segment(pred), segment(ref)
        pred_len, ref_len = pred_len + len(p), ref_len + len(r)
        for n in range(1, max_n + 1):
            pc, rc = _ngrams(p, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def generation_scores(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Exact match and mean ROUGE-L (per example), corpus BLEU-4; all in percent."""
    n = max(len(refs), 1)
    return {
        "exact_match": 100 * sum(exact_match(p, r) for p, r in zip(preds, refs)) / n,
        "rouge_l": 100 * sum(rouge_l(p, r) for p, r in zip(preds, refs)) / n,
        "bleu_4": 100 * bleu(preds, refs),
    }

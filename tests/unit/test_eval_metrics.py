"""The metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from softprompt.evaluate.metrics import (
    accuracy, bleu, confusion_matrix, exact_match, generation_scores, lcs_length, macro_f1, rouge_l, segment,
)

GOLD = ["pos", "pos", "neg", "neg", "neu"]
PRED = ["pos", "neg", "neg", "neg", "pos"]
LABELS = ["pos", "neg", "neu"]


def test_accuracy_confusion_macro_f1():
    assert accuracy(PRED, GOLD) == pytest.approx(3 / 5)
    assert confusion_matrix(PRED, GOLD, LABELS) == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # pos: P 1/2, R 1/2 -> F1 1/2; neg: P 2/3, R 1 -> F1 4/5; neu: no hit -> 0
    assert macro_f1(PRED, GOLD, LABELS) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert macro_f1(GOLD, GOLD, LABELS) == 1.0
    with pytest.raises(ValueError):
        accuracy(PRED, GOLD[:2])


def test_segment_words_punctuation_and_cjk_characters():
    assert segment("Hello, World!") == ["hello", ",", "world", "!"]
    assert segment("我爱北京 天安门") == ["我", "爱", "北", "京", "天", "安", "门"]
    assert segment("GPT-4 用中文") == ["gpt", "-", "4", "用", "中", "文"]


def test_exact_match_normalizes_case_space_and_end_punctuation():
    assert exact_match("  Positive. ", "positive") == 1.0
    assert exact_match("Paris is  nice", "paris is nice") == 1.0
    assert exact_match("北京。", "北京") == 1.0
    assert exact_match("positive", "negative") == 0.0


def test_rouge_l_by_hand():
    assert lcs_length("abcbdab", "bdcaba") == 4  # the textbook example (CLRS)
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = "the cat on the mat": 5 of 6 both ways
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # P = 2/2, R = 2/4 -> F1 = 2/3
    assert rouge_l("cat mat", "the cat the mat") == pytest.approx(2 / 3)
    assert rouge_l("我爱北京", "我爱上海") == pytest.approx(0.5)  # characters: 我爱 of 4 each
    assert rouge_l("", "anything") == 0.0


def test_bleu_by_hand():
    # p1..p4 = 6/7, 5/6, 4/5, 3/4; longer than the reference, so no brevity penalty
    assert bleu(["the cat is on the mat today"], ["the cat is on the mat"]) == pytest.approx((3 / 7) ** 0.25)
    # every n-gram matches, 4 tokens vs 6: brevity penalty exp(1 - 6/4)
    assert bleu(["the cat is on"], ["the cat is on the mat"]) == pytest.approx(math.exp(-0.5))
    assert bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == 0.0  # no 4-gram in common
    # corpus level: counts are summed over sentences before the precisions are taken
    two = bleu(["a b c d", "a b c d e"], ["a b c d", "a b c d x"])
    # p1 = 8/9, p2 = 6/7, p3 = 4/5, p4 = 2/3; 9 vs 9 tokens -> no brevity penalty
    assert two == pytest.approx((8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25)
    # Chinese by character: 我爱北京天安门 vs 我爱北京故宫: p1 4/7 p2 3/6 p3 2/5 p4 1/4, 7 > 6 tokens
    assert bleu(["我爱北京天安门"], ["我爱北京故宫"]) == pytest.approx((4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25)


def test_generation_scores_in_percent():
    scores = generation_scores(["Paris.", "blue sky"], ["paris", "the sky"])
    assert scores["exact_match"] == pytest.approx(50.0)
    # "paris ." vs "paris": P 1/2, R 1 -> 2/3 (punctuation is a token); "blue sky" vs "the sky": 1/2
    assert scores["rouge_l"] == pytest.approx(100 * (2 / 3 + 0.5) / 2)
    assert set(scores) == {"exact_match", "rouge_l", "bleu_4"}

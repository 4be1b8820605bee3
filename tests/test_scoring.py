"""The accuracy benchmark's scoring: what each metric forgives and what it charges."""

from __future__ import annotations

from bench.common import bag_cer, f1, word_counts


def test_order_free_cer_ignores_order_case_and_spaces_but_counts_wrong_characters() -> None:
    assert bag_cer(["Hello World", "abc"], ["abc", "helloworld"]) == (0, 13)
    assert bag_cer(["TOTAL 12.50"], ["TOTAL 12.80"]) == (1, 10)


def test_partial_ground_truth_charges_missed_and_misread_characters_not_text_read_beyond_it() -> None:
    # An ICDAR 2015 image: "Buona Vista" lies in a region the ground truth leaves out (`###`).
    gt, ocr = ["HarbourFront", "CC22"], ["HarbourFront", "CCZZ", "Buona Vista"]
    assert bag_cer(gt, ocr) == (12, 16)  # every extra character charged
    assert bag_cer(gt, ocr, partial_gt=True) == (2, 16)  # only the misread "22"
    assert bag_cer(gt, ["HarbourFront"], partial_gt=True) == (4, 16)  # a missed line still costs


def test_word_f1_charges_glued_words_in_both_tokenisations() -> None:
    for loose, punct in ((False, False), (True, False), (False, True)):
        matched, ref, hyp = word_counts(["TAX INVOICE"], ["TAXINVOICE"], loose=loose, punct=punct)
        assert (matched, ref, hyp) == (0, 2, 1)
        assert f1(matched, ref, hyp) == 0.0


def test_loose_word_f1_forgives_only_hyphen_and_colon_splits() -> None:
    gt = ["Tel 212- 450- 4000", "ROC: 1026984-X"]
    ocr = ["Tel 212-450-4000", "ROC:1026984-X"]
    strict = word_counts(gt, ocr)
    loose = word_counts(gt, ocr, loose=True)
    assert strict[0] < strict[1]  # "212-450-4000" matches none of "212", "450", "4000"
    assert loose == (7, 7, 7)
    # A misread digit is still a wrong word.
    assert word_counts(gt, ["Tel 212-450-4008", "ROC:1026984-X"], loose=True)[0] == 6


def test_punctuation_word_f1_forgives_splits_at_any_mark_and_nothing_else() -> None:
    # FUNSD writes "Acceptance/ Merchandising" and "P. O. S." where the page has no spaces.
    gt = ["INDEPENDENTS ACCEPTANCE/ MERCHANDISING:", "EFFECTIVENESS OF P. O. S.:"]
    ocr = ["INDEPENDENTS ACCEPTANCE/MERCHANDISING:", "EFFECTIVENESS OF P.O.S.:"]
    assert word_counts(gt, ocr, loose=True)[0] < 7
    assert word_counts(gt, ocr, punct=True) == (8, 8, 8)
    assert word_counts(gt, ["INDEPENDENTS ACCEPTANCE/MERCHANDISING:", "EFFECTIVENESSOF P.O.S.:"], punct=True)[0] == 6

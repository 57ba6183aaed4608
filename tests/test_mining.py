"""Underfit mining on constructed examples where the right sets are known by hand."""

import numpy as np
import pytest

from ea_core import mining
from ea_core.errors import ConfigError
from ea_core.llm.base import FAILED, UNPARSEABLE


def onehot(pred, k=3):
    p = np.full((len(pred), k), 0.1)
    p[np.arange(len(pred)), pred] = 0.8
    return p


# Six training examples with labels 0..2. SSM A is right on 0,1,2; SSM B right on 0,3.
Y = np.array([0, 1, 2, 0, 1, 2])
SSM_A = onehot([0, 1, 2, 1, 2, 0])  # wrong on 3,4,5
SSM_B = onehot([0, 0, 0, 0, 0, 0])  # wrong on 1,2,4,5


def test_rule_all_sends_only_examples_every_ssm_gets_wrong():
    assert mining.ssm_wrong([SSM_A, SSM_B], Y, "all").tolist() == [4, 5]


def test_rule_top_uses_the_first_ranked_ssm_only():
    assert mining.ssm_wrong([SSM_A, SSM_B], Y, "top").tolist() == [3, 4, 5]
    assert mining.ssm_wrong([SSM_B, SSM_A], Y, "top").tolist() == [1, 2, 4, 5]


def test_underfit_is_where_the_lm_is_wrong_too_and_failures_are_kept_apart():
    candidates = np.array([1, 2, 4, 5])
    lm = np.array([1, UNPARSEABLE, 0, FAILED])  # right, unparseable (wrong), wrong, failed
    res = mining.split_underfit(candidates, lm, Y, n_train=len(Y))
    assert res.underfit.tolist() == [2, 4]
    assert res.failed.tolist() == [5]
    s = res.summary()
    assert s["sent_to_lm"] == 4 and s["underfit"] == 2 and s["lm_failed"] == 1 and s["lm_unparseable"] == 1
    assert s["fitted"] == len(Y) - 2 - 1
    assert s["lm_right_on_candidates"] == 1


def test_ea_full_trains_on_every_lm_error_except_failures():
    lm = np.array([0, 2, 2, FAILED, UNPARSEABLE, 1])
    assert mining.lm_errors(lm, Y).tolist() == [1, 4, 5]


def test_kfold_indices_partition_and_stratify():
    y = np.repeat([0, 1, 2], 20)
    folds = mining.kfold_indices(y, 4, seed=1)
    allidx = np.concatenate(folds)
    assert sorted(allidx.tolist()) == list(range(60))
    for f in folds:
        assert np.bincount(y[f], minlength=3).tolist() == [5, 5, 5]


def test_bad_rule_is_a_clear_error():
    with pytest.raises(ConfigError, match="mining rule"):
        mining.ssm_wrong([SSM_A], Y, "some")

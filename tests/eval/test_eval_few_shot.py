"""Few-shot primitives: the k-shot draw."""
import numpy as np

from mmfm.eval import sample_k_shot


def test_sample_k_shot():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3 + [-1] * 5)
    idx = sample_k_shot(labels, 4, seed=0)
    assert np.bincount(labels[idx]).tolist() == [4, 4, 3]          # class 2 has only 3: all of them
    assert len(set(idx)) == len(idx) and (labels[idx] >= 0).all()  # no repeats, never unlabelled
    np.testing.assert_array_equal(idx, sample_k_shot(labels, 4, seed=0))       # deterministic
    assert not np.array_equal(idx, sample_k_shot(labels, 4, seed=1))         # seeds differ

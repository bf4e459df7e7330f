"""Novelty against a version's training embeddings: covered regions, however sparse, are not novel."""

import numpy as np
import pandas as pd
import pytest

from data.novelty import NoveltyReference


def _cluster(rng, centre: np.ndarray, n: int, spread: float) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, len(centre)))


def _baseline(rng, dense: np.ndarray, sparse: np.ndarray, n_sparse: int) -> pd.DataFrame:
    """A big well-sampled original region and a small newly labelled one, as after a retrain."""
    train = np.concatenate([_cluster(rng, dense, 1200, 0.3), _cluster(rng, sparse, n_sparse, 0.3)])
    val = _cluster(rng, dense, 300, 0.3)  # held-out images: mostly from the original data
    embeddings = list(np.concatenate([train, val]).astype(np.float32))
    return pd.DataFrame({"embedding": embeddings, "split": ["train"] * len(train) + ["val"] * len(val)})


@pytest.fixture
def regions():
    rng = np.random.default_rng(0)
    dim = 16
    dense, sparse, unseen = (np.eye(dim)[i] * 4 for i in range(3))
    return rng, dense, sparse, unseen


def test_lof_calls_a_sparsely_learnt_region_covered_and_an_unseen_one_novel(regions):
    rng, dense, sparse, unseen = regions
    reference = NoveltyReference.from_baseline(_baseline(rng, dense, sparse, 60), k=20, method="lof")
    covered_sparse = (reference.novelty(_cluster(rng, sparse, 400, 0.3)) > 1).mean()
    covered_dense = (reference.novelty(_cluster(rng, dense, 400, 0.3)) > 1).mean()
    novel = (reference.novelty(_cluster(rng, unseen, 400, 0.3)) > 1).mean()
    assert covered_dense < 0.05 and covered_sparse < 0.1 and novel > 0.95


def test_a_plain_distance_calls_the_same_sparse_region_novel(regions):
    """Why LOF is the default: the k-NN distance is scaled by the dense region's held-out images."""
    rng, dense, sparse, unseen = regions
    reference = NoveltyReference.from_baseline(_baseline(rng, dense, sparse, 60), k=20, method="knn")
    assert (reference.novelty(_cluster(rng, sparse, 400, 0.3)) > 1).mean() > 0.2
    assert (reference.novelty(_cluster(rng, unseen, 400, 0.3)) > 1).mean() > 0.95


@pytest.mark.parametrize("method", ["lof", "knn"])
def test_a_baseline_of_validation_embeddings_only_is_compared_leave_one_out(regions, method):
    rng, dense, _, unseen = regions
    val = _cluster(rng, dense, 200, 0.3).astype(np.float32)
    reference = NoveltyReference.from_baseline(pd.DataFrame({"embedding": list(val)}), method=method)
    assert (reference.novelty(_cluster(rng, dense, 200, 0.3)) > 1).mean() < 0.1
    assert (reference.novelty(_cluster(rng, unseen, 200, 0.3)) > 1).mean() > 0.95


def test_bad_references_are_refused_with_a_reason():
    tiny = pd.DataFrame({"embedding": [np.ones(4, dtype=np.float32)] * 2, "split": ["train", "val"]})
    with pytest.raises(ValueError, match="at least 3"):
        NoveltyReference.from_baseline(tiny)
    with pytest.raises(ValueError, match="novelty method"):
        NoveltyReference(np.ones((5, 4), dtype=np.float32), 1.0, 2, 0.99, method="magic")


def test_stats_outside_the_whole_training_range_are_novel_and_missing_ones_never():
    from monitoring.drift import outside_range

    rng = np.random.default_rng(0)
    baseline = pd.DataFrame({"brightness": rng.uniform(50, 100, 500), "contrast": rng.uniform(60, 110, 500)})
    log = pd.DataFrame(
        {
            "brightness": [75.0, 99.0, 103.0, 200.0, np.nan, 75.0],  # 103: inside the 10 % margin
            "contrast": [80.0, 80.0, 80.0, 80.0, 80.0, 10.0],
        }
    )
    assert outside_range(baseline, log, ["brightness", "contrast"]).tolist() == [False, False, False, True, False, True]
    assert not outside_range(baseline, log, []).any()  # switched off
    assert not outside_range(baseline, log.drop(columns="contrast"), ["contrast"]).any()  # a log without the column

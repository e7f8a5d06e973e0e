import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from omoe_lab.analysis.embedding import embed, tsne_perplexity


@pytest.fixture(autouse=True)
def single_thread():
    # a few hundred points: OpenMP threads cost more than they save, and on a busy 2-core
    # machine their spin-waiting made one t-SNE here take from 0.3 s to 20 s
    with threadpool_limits(1):
        yield


def _clustered_outputs(tokens=30, experts=3, dim=20, spread=0.1, seed=0):
    """Each expert's outputs scatter around its own centre: clearly diverse experts."""
    rng = np.random.default_rng(seed)
    centres = 5.0 * rng.normal(size=(experts, dim))
    return centres[None] + spread * rng.normal(size=(tokens, experts, dim))


def _same_expert_neighbour_rate(frame):
    """Fraction of points whose nearest other point in the 2-D map belongs to the same expert."""
    xy = frame[["x", "y"]].to_numpy()
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    experts = frame["expert"].to_numpy()
    return float((experts[distances.argmin(axis=1)] == experts).mean())


def test_rows_columns_and_metadata():
    outputs = _clustered_outputs(tokens=10, experts=3, dim=6)
    tasks = np.array(["boolq", "piqa"] * 5)
    frame = embed(outputs, method="pca", metadata={"task": tasks, "token": torch.arange(10) + 100, "layer": "q_proj", "method": "omoe"})
    assert list(frame.columns) == ["x", "y", "expert", "token_row", "projection", "task", "token", "layer", "method"]
    assert len(frame) == 30
    # token-major: row k is token k // 3, expert k % 3
    assert frame["token_row"].tolist() == [k // 3 for k in range(30)]
    assert frame["expert"].tolist() == [k % 3 for k in range(30)]
    assert frame["task"].tolist() == [tasks[k // 3] for k in range(30)]
    assert frame["token"].tolist() == [100 + k // 3 for k in range(30)]
    assert set(frame["layer"]) == {"q_proj"} and set(frame["method"]) == {"omoe"}
    assert set(frame["projection"]) == {"pca"}
    assert frame.attrs["perplexity"] is None


def test_metadata_from_a_dataframe():
    outputs = _clustered_outputs(tokens=5, experts=2, dim=4)
    metadata = pd.DataFrame({"task": list("abcde"), "token": range(5)})
    frame = embed(outputs, method="pca", metadata=metadata)
    assert frame["task"].tolist() == [t for t in "abcde" for _ in range(2)]
    assert frame["token"].tolist() == [t for t in range(5) for _ in range(2)]


def test_pca_matches_an_svd_reference_up_to_sign():
    outputs = _clustered_outputs(tokens=12, experts=2, dim=5, spread=1.0)
    frame = embed(outputs, method="pca")
    points = outputs.reshape(-1, 5)  # token-major, like the frame
    centered = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    reference = centered @ vt[:2].T
    for column, axis in (("x", 0), ("y", 1)):
        got = frame[column].to_numpy()
        sign = np.sign(got @ reference[:, axis])
        np.testing.assert_allclose(sign * got, reference[:, axis], atol=1e-9)


def test_tsne_separates_diverse_experts_and_mixes_collapsed_ones():
    diverse = embed(_clustered_outputs(tokens=30, experts=3), method="tsne", max_iter=500)
    assert _same_expert_neighbour_rate(diverse) == 1.0

    rng = np.random.default_rng(1)
    shared = rng.normal(size=(30, 1, 20))
    collapsed = shared + 1e-3 * rng.normal(size=(30, 3, 20))
    mixed = embed(collapsed, method="tsne", max_iter=500)
    assert _same_expert_neighbour_rate(mixed) < 0.6  # chance is 1/3


def test_tsne_is_deterministic_for_a_fixed_random_state_and_clamps_perplexity():
    outputs = _clustered_outputs(tokens=4, experts=2, dim=60)  # 8 points, d > pca_dims
    first = embed(outputs, random_state=3, max_iter=250)
    second = embed(outputs, random_state=3, max_iter=250)
    pd.testing.assert_frame_equal(first, second)
    assert first.attrs["perplexity"] == pytest.approx(7 / 3)
    assert tsne_perplexity(1000) == 30.0
    assert tsne_perplexity(31, perplexity=50.0) == 10.0


def test_expert_and_active_filters():
    outputs = _clustered_outputs(tokens=6, experts=4, dim=5)
    only_two = embed(outputs, method="pca", experts=[1, 3])
    assert only_two["expert"].tolist() == [1, 3] * 6
    active = torch.zeros(6, 4, dtype=torch.bool)
    active[:, 0] = True
    active[::2, 2] = True
    routed = embed(outputs, method="pca", active=active)
    assert list(zip(routed["token_row"], routed["expert"])) == [
        (0, 0), (0, 2), (1, 0), (2, 0), (2, 2), (3, 0), (4, 0), (4, 2), (5, 0)
    ]


@pytest.mark.parametrize("call, message", [
    (lambda: embed(np.random.rand(5, 2, 3), method="umap"), "method must be"),
    (lambda: embed(np.random.rand(1, 2, 3), method="pca"), "at least 4"),
    (lambda: embed(np.ones((5, 2, 3)), method="pca"), "identical"),
    (lambda: embed(np.random.rand(5, 2, 1), method="pca"), "at least 2"),
    (lambda: embed(np.random.rand(5, 2, 3), experts=[2]), "experts must be"),
    (lambda: embed(np.random.rand(5, 2, 3), active=np.ones((5, 3), dtype=bool)), "active must have shape"),
    (lambda: embed(np.random.rand(5, 2, 3), metadata={"task": ["a"] * 4}), "one per token"),
    (lambda: embed(np.random.rand(5, 2, 3), metadata={"x": 1}), "clashes"),
    (lambda: embed(np.random.rand(5, 2, 3), metadata=[1, 2]), "mapping"),
])
def test_invalid_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()

"""Universal features of a weakly dependent joint distribution (chapter 08)."""

from __future__ import annotations

import pytest
import torch

from softmax_repro.engine import training
from softmax_repro.methods import universal_features as uf


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared machine's cores stall multi-threaded small kernels."""
    with training.cpu_threads(1):
        yield


@pytest.fixture()
def problem():
    gen = torch.Generator().manual_seed(0)
    px = torch.rand(10, generator=gen, dtype=torch.float64) + 0.5
    py = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    px, py = px / px.sum(), py / py.sum()
    return px, py, uf.centred_perturbation(px, py, gen)


def test_joint_keeps_its_marginals_and_stays_a_distribution(problem):
    px, py, phi = problem
    assert float(phi.abs().max()) == pytest.approx(1.0)
    joint = uf.weakly_dependent_joint(px, py, phi, 0.9)
    assert torch.allclose(joint.sum(1), px) and torch.allclose(joint.sum(0), py)
    assert bool((joint >= 0).all())
    with pytest.raises(ValueError, match=r"eps=1\.5"):
        uf.weakly_dependent_joint(px, py, phi, 1.5)


def test_dependence_matrix_by_hand(problem):
    px, py, phi = problem
    joint = uf.weakly_dependent_joint(px, py, phi, 0.3)
    root = torch.sqrt(torch.outer(px, py))
    b = joint / root
    values = torch.linalg.svdvals(b)
    assert float(values[0]) == pytest.approx(1.0)  # top singular value of B is 1 with √P_X
    assert torch.allclose(b.T @ torch.sqrt(px), torch.sqrt(py))
    assert torch.allclose(uf.dependence_matrix(joint), 0.3 * root * phi)
    independent = uf.weakly_dependent_joint(px, py, phi, 0.0)
    assert float(uf.dependence_matrix(independent).abs().max()) < 1e-15


def test_h_score_maximum_is_reached_by_the_singular_features(problem):
    px, py, phi = problem
    joint = uf.weakly_dependent_joint(px, py, phi, 0.2)
    left, values, right = uf.top_singular(uf.dependence_matrix(joint), 2)
    f = left / torch.sqrt(px).unsqueeze(1)
    g = values * right / torch.sqrt(py).unsqueeze(1)
    assert float(uf.h_score(f, g, joint)) == pytest.approx(float(uf.h_score_max(joint, 2)))
    assert float(uf.h_score(f, 0.5 * g, joint)) < float(uf.h_score_max(joint, 2))
    assert uf.feature_h_fraction(f @ torch.tensor([[2.0, 1.0], [0.0, 3.0]],
                                                   dtype=torch.float64), joint) == pytest.approx(1)
    random_f = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert uf.feature_h_fraction(random_f, joint) < 0.95
    angles = uf.principal_angles_deg(uf.feature_directions(f, px), left)
    assert float(angles.max()) < 1e-5


def test_principal_angles_by_hand():
    e = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(uf.principal_angles_deg(e[:, :1], e[:, 1:2]),
                          torch.tensor([90.0], dtype=torch.float64))
    tilted = torch.tensor([[1.0], [1.0], [0.0]], dtype=torch.float64)
    assert float(uf.principal_angles_deg(tilted, e[:, :1])[0]) == pytest.approx(45.0)


def test_softmax_model_learns_the_universal_features_at_small_eps(problem):
    px, py, phi = problem
    angles = {}
    for eps in (0.05, 0.9):
        joint = uf.weakly_dependent_joint(px, py, phi, eps)
        left, _, _ = uf.top_singular(uf.dependence_matrix(joint), 2)
        model = uf.SoftmaxFeatureModel(10, 6, 2, torch.Generator().manual_seed(2))
        assert uf.fit_population(model, joint, iterations=300) < 1e-2
        directions = uf.feature_directions(model.f.detach(), px)
        angles[eps] = float(uf.principal_angles_deg(directions, left).max())
    assert angles[0.05] < 5.0
    assert angles[0.9] > angles[0.05]

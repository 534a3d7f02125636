"""Multinomial logistic regression solvers, ADMM-Softmax among them (chapter 08)."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from softmax_repro.engine import training
from softmax_repro.methods import admm_softmax as admm

LAM = 1e-2


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the shared machine's cores stall multi-threaded small kernels."""
    with training.cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def iris():
    x, y = load_iris(return_X_y=True)
    x = torch.as_tensor((x - x.mean(0)) / x.std(0), dtype=torch.float64)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    y = torch.as_tensor(y)
    model = LogisticRegression(C=1.0 / (len(y) * LAM), fit_intercept=False, tol=1e-12,
                               max_iter=50_000).fit(x.numpy(), y.numpy())
    w_star = torch.as_tensor(model.coef_, dtype=torch.float64)
    return x, y, float(admm.objective(w_star, x, y, LAM))


def test_gradient_and_hessian_vector_match_autograd(iris):
    x, y, _ = iris
    w = torch.randn(3, x.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w.requires_grad_(True)
    value = admm.objective(w, x, y, LAM)
    (auto,) = torch.autograd.grad(value, w, create_graph=True)
    assert torch.allclose(admm.gradient(w.detach(), x, y, LAM), auto.detach(), atol=1e-12)
    v = torch.randn_like(w)
    (hv,) = torch.autograd.grad((auto * v).sum(), w)
    assert torch.allclose(admm.hessian_vector(w.detach(), x, LAM, v), hv, atol=1e-12)


def test_objective_by_hand():
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    expected = -torch.log(torch.tensor(torch.e / (torch.e + 1.0))) + 0.5 * LAM
    assert float(admm.objective(w, x, torch.tensor([0]), LAM)) == pytest.approx(float(expected))


@pytest.mark.parametrize(("solver", "tolerance"), [
    ("admm", 1e-3), ("newton_krylov", 1e-8), ("lbfgs", 1e-5), ("sgd", 5e-2)])
def test_every_solver_reaches_the_sklearn_optimum(iris, solver, tolerance):
    x, y, f_star = iris
    gaps: list[float] = []

    def record(iteration, w):
        gaps.append((float(admm.objective(w, x, y, LAM)) - f_star) / f_star)

    if solver == "admm":
        admm.admm_softmax(x, y, 3, LAM, rho=0.1, iterations=200, callback=record)
    elif solver == "newton_krylov":
        admm.newton_krylov(x, y, 3, LAM, iterations=20, callback=record)
    elif solver == "lbfgs":
        admm.lbfgs(x, y, 3, LAM, iterations=60, callback=record)
    else:
        admm.sgd(x, y, 3, LAM, epochs=40, lr=1.0, batch_size=16,
                 generator=torch.Generator().manual_seed(0), callback=record)
    assert min(gaps) > -1e-9  # scikit-learn's solution is the optimum
    assert gaps[-1] < tolerance
    assert gaps[-1] < gaps[0]


def test_admm_reaches_the_optimum_and_the_start_does_not(iris):
    """ADMM's iterate reaches the optimum, while the null (the zero weights every solver starts
    from) is far from it: the gap measure can tell them apart."""
    x, y, f_star = iris
    w = admm.admm_softmax(x, y, 3, LAM, rho=0.1, iterations=300)
    assert (float(admm.objective(w, x, y, LAM)) - f_star) / f_star < 1e-3
    zero = torch.zeros(3, x.shape[1], dtype=torch.float64)
    assert (float(admm.objective(zero, x, y, LAM)) - f_star) / f_star > 0.5


def test_sgd_is_deterministic_given_the_generator(iris):
    x, y, _ = iris
    runs = [admm.sgd(x, y, 3, LAM, epochs=3, lr=1.0, batch_size=16,
                     generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])

"""Chapter 08: softmax where the answer is known exactly.

Four parts, one results file, each checked against an exact answer rather than a proxy:

* ``sst`` (Paulus et al. 2020): gradient estimators of ``∇_θ E[f(X)]`` for ``X`` a categorical
  variable over ``num_items`` categories or the top-``subset_size`` set of ``num_items`` Gumbel-
  perturbed logits; ``f(x) = ‖x − c‖²``. The exact gradient comes from enumerating every outcome.
  Each estimator averages ``sst_samples`` samples; its relative bias², variance and MSE come from
  ``sst_repeats`` independent estimates. Methods: ``reinforce``, ``reinforce_loo`` (leave-one-out
  baseline), ``gumbel_softmax`` (categorical: the categorical SST; top-k: L2X's ``k`` relaxed draws
  combined by a maximum), ``independent_bernoulli`` and ``topk_sst`` (top-k only), each relaxation
  at every temperature (REINFORCE has none: its rows repeat at each ``temperature`` so that
  comparisons pair on it). Health rows: the REINFORCE mean of ``health_samples`` samples against the
  exact gradient, and a χ² test of Gumbel-max outcome frequencies against the exact probabilities.
* ``admm`` (Wu Fung et al. 2020): L2-regularised multinomial logistic regression on standardised
  Digits (train/validation/test); ``λ`` chosen on the validation split by scikit-learn, whose
  solution is the optimum ``F*``. ADMM-Softmax, Newton–Krylov, L-BFGS and SGD run for fixed
  iteration budgets; every iteration is traced (objective gap, accuracies, elapsed seconds). Rows
  at two selections: ``final`` (the last iterate) and ``best_val`` (the iterate with the best
  validation accuracy, as the official code returns). ADMM's ``ρ`` and SGD's step are each chosen
  from a grid of the same size by the final training objective.
* ``mrc`` (Mazuelas et al.): the 0-1-loss minimax risk classifier with linear features on
  scikit-learn's bundled iris, wine, breast cancer and digits, one stratified split per seed;
  its lower/upper bounds, the expected test error of its randomised rule (what the bounds bound)
  and the error of its deterministic rule, against ``LogisticRegressionCV`` (``C`` from
  ``c_grid`` by 3-fold cross-validated accuracy on the training split).
* ``universal`` (Huang, Xu, Zheng, Wornell): a random weakly dependent joint
  ``P = P_X P_Yᵀ ⊙ (1 + εφ)`` per seed; a softmax model with ``uf_k``-dimensional features is
  trained on the exact distribution (population cross-entropy, L-BFGS) at every ``ε``; principal
  angles between its features and the top singular subspace of ``B̃``, and H-score fractions.
  ``random_features`` (random ``f``) is the null.

The ``paper`` profile runs the same embedded problems with the papers' sizes where they apply
(MRCpy's 10,000 subgradient steps, more repeats and iterations). No hub data set is wired: the
ADMM paper's MNIST and CIFAR-10 AlexNet features are not used here (see the deviations table).

Rows: ``part, method, seed, metric, value`` plus ``problem`` and ``temperature`` (sst),
``dataset`` (admm, mrc), ``selection`` and ``iteration`` (admm), ``eps`` (universal).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn import datasets as sk_datasets
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import train_test_split

from softmax_repro.config import (
    BaseConfig,
    ConfigError,
    check_in_range,
    check_int,
    check_positive,
    check_subset,
    config_factory,
)
from softmax_repro.engine import training
from softmax_repro.engine.timing import PhaseTimer
from softmax_repro.methods import admm_softmax as admm
from softmax_repro.methods import minimax_risk as mrc
from softmax_repro.methods import relaxations as rx
from softmax_repro.methods import universal_features as uf
from softmax_repro.pipeline import results

CHAPTER = "08_exact_answers"
PARTS = ("sst", "admm", "mrc", "universal")
SST_PROBLEMS = ("categorical", "topk")
TABULAR = {
    "iris": sk_datasets.load_iris,
    "wine": sk_datasets.load_wine,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "digits": sk_datasets.load_digits,
}
"""scikit-learn's bundled data sets (no download)."""
SOLVERS = ("admm", "newton_krylov", "lbfgs", "sgd")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    """Chapter 08 settings.

    Attributes:
        parts: which of ``sst``, ``admm``, ``mrc``, ``universal`` to run.
        sst_problems: ``categorical`` and/or ``topk``.
        num_items: categories / items ``K`` (issue: 8).
        subset_size: ``k`` of the top-k problem (issue: 3, so 56 subsets).
        logit_scale: standard deviation of the random logits ``θ``.
        temperatures: relaxation temperatures ``t``.
        sst_samples: samples per gradient estimate (equal for every estimator).
        sst_repeats: independent estimates behind each bias/variance/MSE.
        health_samples: samples of the REINFORCE convergence check and of the χ² test.
        admm_dataset: data set of the ADMM part (a key of :data:`TABULAR`).
        val_fraction, test_fraction: ADMM split fractions of the whole set.
        c_grid: scikit-learn ``C`` values: ADMM's ``λ = 1/(n C)`` is chosen on validation, and
            the MRC part's logistic regression by 3-fold cross-validation.
        admm_iterations, nk_iterations, lbfgs_iterations, sgd_epochs: solver budgets.
        rho_grid: ADMM penalties tried (the one with the lowest final objective is kept).
        sgd_lr_grid: SGD base steps tried (same size as ``rho_grid``).
        sgd_batch: SGD mini-batch size.
        newton_steps: ADMM's Newton steps per Z-update.
        cg_iterations: Newton–Krylov's CG iterations per Newton step.
        mrc_datasets: data sets of the MRC part.
        mrc_test_fraction: test fraction of each MRC split.
        mrc_s: MRCpy's ``s`` (λ = s·std/√n; default 0.3).
        mrc_iterations: subgradient steps per bound (MRCpy: 10,000).
        uf_num_x, uf_num_y: alphabet sizes of X and Y.
        uf_k: feature dimension (< ``uf_num_y − 1``).
        eps_grid: dependence strengths ``ε`` in (0, 1].
        uf_iterations: L-BFGS iterations of the population fit.
        threads: torch intra-op threads.
    """

    parts: tuple[str, ...] = PARTS
    sst_problems: tuple[str, ...] = SST_PROBLEMS
    num_items: int = 8
    subset_size: int = 3
    logit_scale: float = 1.0
    temperatures: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0)
    sst_samples: int = 8
    sst_repeats: int = 1_000
    health_samples: int = 400_000
    admm_dataset: str = "digits"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
    admm_iterations: int = 60
    nk_iterations: int = 12
    lbfgs_iterations: int = 100
    sgd_epochs: int = 30
    rho_grid: tuple[float, ...] = (0.003, 0.01, 0.03)
    sgd_lr_grid: tuple[float, ...] = (1.0, 3.0, 10.0)
    sgd_batch: int = 64
    newton_steps: int = 3
    cg_iterations: int = 20
    mrc_datasets: tuple[str, ...] = tuple(TABULAR)
    mrc_test_fraction: float = 0.3
    mrc_s: float = 0.3
    mrc_iterations: int = 2_000
    uf_num_x: int = 16
    uf_num_y: int = 8
    uf_k: int = 2
    eps_grid: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 0.9)
    uf_iterations: int = 300
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_subset("parts", self.parts, PARTS)
        check_subset("sst_problems", self.sst_problems, SST_PROBLEMS)
        check_int("num_items", self.num_items, 2)
        if not 1 <= self.subset_size < self.num_items:
            raise ConfigError(f"subset_size={self.subset_size!r} is not allowed; it must lie in "
                              f"[1, num_items − 1 = {self.num_items - 1}]")
        if not self.temperatures:
            raise ConfigError("temperatures is empty; give at least one t > 0, e.g. [0.5]")
        for t in self.temperatures:
            check_positive("temperatures item", t)
        check_positive("logit_scale", self.logit_scale)
        check_int("sst_samples", self.sst_samples, 2)
        check_int("sst_repeats", self.sst_repeats, 2)
        check_int("health_samples", self.health_samples, 100)
        check_subset("admm_dataset", (self.admm_dataset,), tuple(TABULAR))
        check_in_range("val_fraction", self.val_fraction, 0.05, 0.45)
        check_in_range("test_fraction", self.test_fraction, 0.05, 0.45)
        for name in ("c_grid", "rho_grid", "sgd_lr_grid", "eps_grid"):
            values = getattr(self, name)
            if not values:
                raise ConfigError(f"{name} is empty; give at least one positive number")
            for value in values:
                check_positive(f"{name} item", value)
        if len(self.rho_grid) != len(self.sgd_lr_grid):
            raise ConfigError("rho_grid and sgd_lr_grid must have the same length (the same "
                              "tuning budget for ADMM and SGD)")
        for eps in self.eps_grid:
            check_in_range("eps_grid item", eps, 1e-6, 1.0)
        for name in ("admm_iterations", "nk_iterations", "lbfgs_iterations", "sgd_epochs",
                     "sgd_batch", "newton_steps", "cg_iterations", "mrc_iterations",
                     "uf_iterations", "uf_k"):
            check_int(name, getattr(self, name), 1)
        check_subset("mrc_datasets", self.mrc_datasets, tuple(TABULAR))
        check_in_range("mrc_test_fraction", self.mrc_test_fraction, 0.1, 0.5)
        check_positive("mrc_s", self.mrc_s, allow_zero=True)
        check_int("uf_num_x", self.uf_num_x, 2)
        check_int("uf_num_y", self.uf_num_y, 3)
        if self.uf_k > min(self.uf_num_x, self.uf_num_y) - 1:
            raise ConfigError(f"uf_k={self.uf_k!r} is not allowed; it must be at most "
                              "min(uf_num_x, uf_num_y) − 1 (the rank of B̃)")
        check_int("threads", self.threads, 0)


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {"seeds": (0, 1), "temperatures": (0.5, 1.0), "sst_repeats": 100,
              "health_samples": 5_000, "admm_iterations": 10, "nk_iterations": 3,
              "lbfgs_iterations": 10, "sgd_epochs": 3, "rho_grid": (1.0,), "sgd_lr_grid": (1.0,),
              "c_grid": (0.1, 1.0), "mrc_iterations": 200,
              "eps_grid": (0.05, 0.5), "uf_iterations": 100},
    "cpu": {"seeds": (0, 1, 2, 3, 4)},
    "paper": {"seeds": tuple(range(10)), "sst_repeats": 5_000, "health_samples": 1_000_000,
              "temperatures": (0.1, 0.25, 0.5, 1.0, 2.0), "admm_iterations": 500,
              "nk_iterations": 50, "lbfgs_iterations": 500, "sgd_epochs": 200,
              "mrc_iterations": 10_000, "uf_iterations": 1_000},
}


make_config = config_factory(Config, PROFILES)


# ---------------------------------------------------------------- stochastic softmax tricks


@dataclasses.dataclass(frozen=True)
class SstProblem:
    """An enumerable problem: logits ``[K]``, vertices ``[M, K]``, ``log P`` and ``f``."""

    logits: torch.Tensor
    vertices: torch.Tensor
    log_prob_fn: Callable[[torch.Tensor], torch.Tensor]
    objective: rx.Objective
    subset_size: int


def sst_problem(config: Config, problem: str, seed: int) -> SstProblem:
    """The problem of ``seed``: ``θ ~ N(0, logit_scale²)``, ``c ~ U(0, 1)^K``, ``f = ‖x − c‖²``."""
    gen = torch.Generator().manual_seed(1_000 * seed + SST_PROBLEMS.index(problem))
    k_items = config.num_items
    logits = config.logit_scale * torch.randn(k_items, generator=gen, dtype=torch.float64)
    target = torch.rand(k_items, generator=gen, dtype=torch.float64)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return ((x - target) ** 2).sum(dim=-1)

    if problem == "categorical":
        return SstProblem(logits, torch.eye(k_items, dtype=torch.float64),
                          lambda t: torch.log_softmax(t, dim=0), objective, 1)
    vertices = rx.subset_indicators(k_items, config.subset_size)
    return SstProblem(logits, vertices,
                      lambda t: rx.plackett_luce_subset_log_probs(t, vertices), objective,
                      config.subset_size)


def _relaxation(method: str, problem: SstProblem,
                t: float) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "gumbel_softmax":
        return (lambda u: rx.gumbel_softmax(u, t)) if problem.subset_size == 1 else (
            lambda u: rx.l2x_relaxation(u, t))
    if method == "independent_bernoulli":
        return lambda u: rx.independent_bernoulli(u, t, problem.subset_size)
    return lambda u: rx.topk_sst(u, t, problem.vertices)


def sst_methods(problem: str) -> tuple[str, ...]:
    """Relaxations compared on ``problem`` (REINFORCE variants come on top)."""
    base = ("gumbel_softmax", "independent_bernoulli")
    return base if problem == "categorical" else (*base, "topk_sst")


def sst_run(config: Config, problem_name: str, seed: int) -> list[dict[str, Any]]:
    """Every estimator's bias/variance/MSE on one problem, plus the two health checks."""
    problem = sst_problem(config, problem_name, seed)
    exact = rx.exact_gradient(problem.logits, problem.log_prob_fn, problem.vertices,
                              problem.objective)
    repeats, n, k_items = config.sst_repeats, config.sst_samples, config.num_items
    base = {"part": "sst", "problem": problem_name, "seed": seed}
    rows: list[dict[str, Any]] = []

    def noise(shape: tuple[int, ...]) -> torch.Tensor:  # common random numbers across methods
        gen = torch.Generator().manual_seed(7_919 * seed + 13 * SST_PROBLEMS.index(problem_name))
        return rx.gumbel(shape, gen)

    def add(method: str, estimates: torch.Tensor, temperature: float | None) -> None:
        errors = rx.estimator_error(estimates, exact)
        errors["log10_rel_mse"] = float(np.log10(errors["rel_mse"]))
        for metric, value in errors.items():
            rows.append({**base, "method": method, "temperature": temperature,
                         "metric": metric, "value": value})

    scores = rx.score_matrix(problem.logits, problem.log_prob_fn)  # [M, K]
    utilities = problem.logits + noise((repeats * n, k_items))
    chosen = rx.argmax_vertex(utilities, problem.vertices)
    values = problem.objective(problem.vertices)[chosen].reshape(repeats, n)
    sample_scores = scores[chosen].reshape(repeats, n, k_items)
    for method, baseline in (("reinforce", False), ("reinforce_loo", True)):
        estimates = rx.reinforce_sample_terms(values, sample_scores, baseline).mean(dim=1)
        for t in config.temperatures:  # no temperature: the same rows at each t, for pairing
            add(method, estimates, t)
    for method in sst_methods(problem_name):
        for t in config.temperatures:
            relax = _relaxation(method, problem, t)
            if method == "gumbel_softmax" and problem.subset_size > 1:
                noisy = problem.logits + noise((repeats * n, problem.subset_size, k_items))
            else:
                noisy = utilities
            grads = rx.relaxed_sample_gradients(noisy, relax, problem.objective)
            add(method, grads.reshape(repeats, n, k_items).mean(dim=1), t)
    rows.extend(_sst_health(config, problem, exact, scores, base))
    return rows


def _sst_health(config: Config, problem: SstProblem, exact: torch.Tensor, scores: torch.Tensor,
                base: dict[str, Any]) -> list[dict[str, Any]]:
    """REINFORCE's mean of ``health_samples`` samples vs the exact gradient (relative error), and
    the χ² p-value of Gumbel-max outcome counts against the enumerated probabilities."""
    gen = torch.Generator().manual_seed(104_729 + base["seed"])
    draws = config.health_samples
    utilities = problem.logits + rx.gumbel((draws, config.num_items), gen)
    chosen = rx.argmax_vertex(utilities, problem.vertices)
    values = problem.objective(problem.vertices)[chosen]
    pooled = (values.unsqueeze(1) * scores[chosen]).mean(dim=0)
    rel_error = float(torch.linalg.vector_norm(pooled - exact) / torch.linalg.vector_norm(exact))
    counts = torch.bincount(chosen, minlength=len(problem.vertices)).numpy()
    expected = torch.exp(problem.log_prob_fn(problem.logits)).numpy() * draws
    p_value = float(stats.chisquare(counts, expected * counts.sum() / expected.sum()).pvalue)
    return [
        {**base, "method": "reinforce", "temperature": None, "metric": "pooled_rel_error",
         "value": rel_error},
        {**base, "method": "gumbel_max", "temperature": None, "metric": "chi2_p",
         "value": p_value},
    ]


# ---------------------------------------------------------------------------- tabular data


@dataclasses.dataclass(frozen=True)
class TabularSplit:
    """Standardised (train statistics) float64 features and int64 labels of one split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def tabular_split(name: str, seed: int, test_fraction: float,
                  val_fraction: float = 0.0) -> TabularSplit:
    """Stratified train/(validation/)test split of a bundled scikit-learn data set.

    Fractions are of the whole set; features are standardised with the training split's mean and
    standard deviation (constant features stay 0).
    """
    x, y = TABULAR[name](return_X_y=True)
    x_rest, x_te, y_rest, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                                  random_state=seed)
    x_va = y_va = None
    if val_fraction > 0:
        x_rest, x_va, y_rest, y_va = train_test_split(
            x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest,
            random_state=seed)
    mean, std = x_rest.mean(axis=0), x_rest.std(axis=0)
    std[std == 0] = 1.0

    def prep(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor((a - mean) / std, dtype=torch.float64)

    def labels(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.as_tensor(a, dtype=torch.int64)

    return TabularSplit(prep(x_rest), labels(y_rest), prep(x_va), labels(y_va), prep(x_te),
                        labels(y_te), int(y.max()) + 1)


# ------------------------------------------------------------------------------ ADMM-Softmax


def with_bias(x: torch.Tensor) -> torch.Tensor:
    """Append a constant 1 column (the regularised bias)."""
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def sklearn_optimum(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The minimiser of ``F`` by scikit-learn (lbfgs, tolerance 1e-10): ``W*`` ``[C, d]``."""
    model = LogisticRegression(C=1.0 / (len(y) * lam), fit_intercept=False, tol=1e-10,
                               max_iter=20_000)
    model.fit(x.numpy(), y.numpy())
    return torch.as_tensor(model.coef_, dtype=torch.float64)


def choose_lambda(split: TabularSplit, c_grid: tuple[float, ...]) -> float:
    """``λ = 1/(n C)`` for the ``C`` with the best validation accuracy (ties: smaller C)."""
    x, xv = with_bias(split.x_train), with_bias(split.x_val)
    scores = []
    for c in c_grid:
        model = LogisticRegression(C=c, fit_intercept=False, max_iter=5_000)
        model.fit(x.numpy(), split.y_train.numpy())
        scores.append(model.score(xv.numpy(), split.y_val.numpy()))
    best = c_grid[int(np.argmax(scores))]
    return 1.0 / (len(split.y_train) * best)


def _solve(config: Config, solver: str, x: torch.Tensor, y: torch.Tensor, num_classes: int,
           lam: float, setting: float | None, seed: int,
           callback: admm.Callback | None = None) -> torch.Tensor:
    if solver == "admm":
        return admm.admm_softmax(x, y, num_classes, lam, setting, config.admm_iterations,
                                 config.newton_steps, callback)
    if solver == "newton_krylov":
        return admm.newton_krylov(x, y, num_classes, lam, config.nk_iterations,
                                  config.cg_iterations, callback=callback)
    if solver == "lbfgs":
        return admm.lbfgs(x, y, num_classes, lam, config.lbfgs_iterations, callback=callback)
    return admm.sgd(x, y, num_classes, lam, config.sgd_epochs, setting, config.sgd_batch,
                    torch.Generator().manual_seed(seed), callback)


def _accuracy(w: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((features @ w.T).argmax(dim=1) == labels).double().mean())


def _traced_solve(config: Config, solver: str, setting: float | None, split: TabularSplit,
                  lam: float, f_star: float, seed: int) -> list[dict[str, float]]:
    """Run ``solver`` once; after every iteration record the relative objective gap, validation
    and test accuracy and the solver's own elapsed seconds (recording time excluded)."""
    x, xv, xt = (with_bias(a) for a in (split.x_train, split.x_val, split.x_test))
    trace: list[dict[str, float]] = []
    start, paused = time.perf_counter(), 0.0

    def record(iteration: int, w: torch.Tensor) -> None:
        nonlocal paused
        pause = time.perf_counter()
        trace.append({
            "iteration": iteration,
            "elapsed_s": pause - start - paused,
            "rel_gap": (float(admm.objective(w, x, split.y_train, lam)) - f_star) / f_star,
            "val_accuracy": _accuracy(w, xv, split.y_val),
            "test_accuracy": _accuracy(w, xt, split.y_test),
        })
        paused += time.perf_counter() - pause

    _solve(config, solver, x, split.y_train, split.num_classes, lam, setting, seed, record)
    return trace


def admm_run(config: Config, seed: int) -> list[dict[str, Any]]:
    """Trace every solver on one split; rows for the final and the best-validation iterate."""
    split = tabular_split(config.admm_dataset, seed, config.test_fraction, config.val_fraction)
    x, xt = with_bias(split.x_train), with_bias(split.x_test)
    y, c = split.y_train, split.num_classes
    lam = choose_lambda(split, config.c_grid)
    w_star = sklearn_optimum(x, y, lam)
    f_star = float(admm.objective(w_star, x, y, lam))
    base = {"part": "admm", "dataset": config.admm_dataset, "seed": seed}

    rows = [{**base, "method": "optimum", "selection": "final", "metric": metric,
             "value": value} for metric, value in (
                ("test_accuracy", _accuracy(w_star, xt, split.y_test)), ("lambda", lam),
                ("objective", f_star))]
    grids = {"admm": config.rho_grid, "sgd": config.sgd_lr_grid}
    for solver in SOLVERS:
        settings = grids.get(solver, (None,))
        if len(settings) > 1:  # tuning: lowest final training objective
            finals = [float(admm.objective(_solve(config, solver, x, y, c, lam, s, seed), x, y,
                                           lam)) for s in settings]
            setting = settings[int(np.argmin(finals))]
        else:
            setting = settings[0]
        trace = _traced_solve(config, solver, setting, split, lam, f_star, seed)
        frame = pd.DataFrame(trace)
        best = frame.loc[int(frame["val_accuracy"].to_numpy().argmax())]  # first best
        final = frame.iloc[-1]
        for selection, point in (("final", final), ("best_val", best)):
            for metric in ("rel_gap", "test_accuracy", "val_accuracy", "iteration"):
                name = "selected_iteration" if metric == "iteration" else metric
                rows.append({**base, "method": solver, "selection": selection,
                             "metric": name, "value": float(point[metric])})
        rows.append({**base, "method": solver, "selection": "final", "metric": "solver_wall_s",
                     "value": float(final["elapsed_s"])})
        if setting is not None:
            rows.append({**base, "method": solver, "selection": "final", "metric": "setting",
                         "value": float(setting)})
        for point in trace:
            for metric in ("rel_gap", "test_accuracy", "elapsed_s"):
                rows.append({**base, "method": solver, "selection": "trace",
                             "iteration": int(point["iteration"]), "metric": f"trace_{metric}",
                             "value": float(point[metric])})
    return rows


def at_equal_time(rows: pd.DataFrame, seconds: float) -> pd.DataFrame:
    """Each solver's last traced iterate within ``seconds`` of solver time, per seed.

    Returns ``method, seed, elapsed_s, rel_gap, test_accuracy`` (NaN when a solver had not
    finished one iteration by then). Wall times depend on the machine: this is for display.
    """
    trace = rows[(rows["part"] == "admm") & (rows["selection"] == "trace")]
    wide = trace.pivot_table(index=["method", "seed", "iteration"], columns="metric",
                             values="value").reset_index()
    records = []
    for (method, seed), group in wide.groupby(["method", "seed"]):
        within = group[group["trace_elapsed_s"] <= seconds]
        last = within.iloc[-1] if len(within) else None
        records.append({"method": method, "seed": seed,
                        "elapsed_s": np.nan if last is None else last["trace_elapsed_s"],
                        "rel_gap": np.nan if last is None else last["trace_rel_gap"],
                        "test_accuracy": np.nan if last is None else last["trace_test_accuracy"]})
    return pd.DataFrame(records)


# --------------------------------------------------------------------------------------- MRC


def mrc_run(config: Config, dataset: str, seed: int) -> list[dict[str, Any]]:
    """The MRC's bounds and errors and LogisticRegressionCV's error on one split."""
    split = tabular_split(dataset, seed, config.mrc_test_fraction)
    model = mrc.fit_mrc(split.x_train, split.y_train, split.num_classes, s=config.mrc_s,
                        iterations=config.mrc_iterations)
    randomised = mrc.expected_error(model.probabilities(split.x_test), split.y_test)
    deterministic = float((model.predict(split.x_test) != split.y_test).double().mean())
    train_randomised = mrc.expected_error(model.probabilities(split.x_train), split.y_train)
    logreg = LogisticRegressionCV(Cs=list(config.c_grid), cv=3, max_iter=1_000, tol=1e-3,
                                  l1_ratios=(0.0,), use_legacy_attributes=False,
                                  scoring="accuracy")
    logreg.fit(split.x_train.numpy(), split.y_train.numpy())
    lr_error = 1.0 - float(logreg.score(split.x_test.numpy(), split.y_test.numpy()))
    base = {"part": "mrc", "dataset": dataset, "seed": seed}
    metrics = {
        "upper": model.upper,
        "lower": model.lower,
        "width": model.upper - model.lower,
        "error_randomised": randomised,
        "train_error_randomised": train_randomised,
        "error": deterministic,
        "covered": float(model.lower <= randomised <= model.upper),
        "covered_deterministic": float(model.lower <= deterministic <= model.upper),
    }
    rows = [{**base, "method": "mrc", "metric": k, "value": v} for k, v in metrics.items()]
    rows.append({**base, "method": "logreg", "metric": "error", "value": lr_error})
    return rows


# ------------------------------------------------------------------------ universal features


def universal_problem(config: Config, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``P_X`` ``[|X|]``, ``P_Y`` ``[|Y|]`` (uniform(0.5, 1.5) weights, normalised) and ``φ``."""
    gen = torch.Generator().manual_seed(31_337 + seed)
    px = torch.rand(config.uf_num_x, generator=gen, dtype=torch.float64) + 0.5
    py = torch.rand(config.uf_num_y, generator=gen, dtype=torch.float64) + 0.5
    px, py = px / px.sum(), py / py.sum()
    return px, py, uf.centred_perturbation(px, py, gen)


def universal_run(config: Config, seed: int) -> list[dict[str, Any]]:
    """Learned vs universal features at every ``ε`` for the problem of ``seed``."""
    px, py, phi = universal_problem(config, seed)
    base = {"part": "universal", "seed": seed}
    rows: list[dict[str, Any]] = []
    max_angles = {}
    for eps in config.eps_grid:
        joint = uf.weakly_dependent_joint(px, py, phi, eps)
        left, _, _ = uf.top_singular(uf.dependence_matrix(joint), config.uf_k)
        gen = torch.Generator().manual_seed(97 * seed + 1)
        model = uf.SoftmaxFeatureModel(config.uf_num_x, config.uf_num_y, config.uf_k, gen)
        grad_norm = uf.fit_population(model, joint, iterations=config.uf_iterations)
        f, g = model.f.detach(), model.g.detach()
        random_f = torch.randn(config.uf_num_x, config.uf_k, generator=gen, dtype=torch.float64)
        for method, features in (("softmax_net", f), ("random_features", random_f)):
            angles = uf.principal_angles_deg(uf.feature_directions(features, px), left)
            values = {"max_angle_deg": float(angles.max()), "min_angle_deg": float(angles.min()),
                      "h_fraction_features": uf.feature_h_fraction(features, joint)}
            if method == "softmax_net":
                values["h_fraction_learned"] = float(uf.h_score(f, g, joint)
                                                     / uf.h_score_max(joint, config.uf_k))
                values["grad_norm"] = grad_norm
                max_angles[eps] = values["max_angle_deg"]
            rows.extend({**base, "method": method, "eps": eps, "metric": k, "value": v}
                        for k, v in values.items())
    low, high = min(config.eps_grid), max(config.eps_grid)
    rows.append({**base, "method": "softmax_net", "metric": "angle_growth_deg",
                 "value": max_angles[high] - max_angles[low]})
    return rows


# ---------------------------------------------------------------------------------------- run


def grid(config: Config) -> list[dict[str, Any]]:
    """Run descriptions: one per (part, problem or data set, seed)."""
    runs: list[dict[str, Any]] = []
    for seed in config.seeds:
        if "sst" in config.parts:
            runs += [{"part": "sst", "problem": p, "seed": seed} for p in config.sst_problems]
        if "admm" in config.parts:
            runs.append({"part": "admm", "dataset": config.admm_dataset, "seed": seed})
        if "mrc" in config.parts:
            runs += [{"part": "mrc", "dataset": d, "seed": seed} for d in config.mrc_datasets]
        if "universal" in config.parts:
            runs.append({"part": "universal", "seed": seed})
    return runs


def run(config: Config, *, results_dir: str = "results") -> results.ChapterResult:
    """Every part's runs; rows written to the results file."""
    with training.cpu_threads(config.threads):
        return _run(config, results_dir)


def _run(config: Config, results_dir: str) -> results.ChapterResult:
    device = training.resolve_device(config.device)
    started, timer = results.now(), PhaseTimer()

    def run_one(desc: dict[str, Any]) -> list[dict[str, Any]]:
        part, seed = desc["part"], desc["seed"]
        training.seed_everything(seed)
        with timer(part):
            if part == "sst":
                return sst_run(config, desc["problem"], seed)
            if part == "admm":
                return admm_run(config, seed)
            if part == "mrc":
                return mrc_run(config, desc["dataset"], seed)
            return universal_run(config, seed)

    rows = training.run_grid(grid(config), run_one, chapter=CHAPTER)
    return results.save_chapter(CHAPTER, config, rows, results_dir=results_dir, started=started,
                                timer=timer, device=device)

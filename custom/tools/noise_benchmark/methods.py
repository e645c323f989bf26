"""The noise benchmark's matrix: methods (overrides of train.json ids), regimes, runs, and the plan.

See :mod:`custom.tools.noise_benchmark` for what the benchmark does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from ..synthetic import noise_slug

#: Methods: overrides of train.json ids (every other id keeps its train.json value).
METHODS: dict[str, dict] = {
    # plain BCE (CheXNet-style), BCE summed over classes
    "bce": {"nvum#loss": "bce"},
    # BCE on z + log(pi) at train time (= the paper's "prior on BCE" ablation row)
    "logit_adjusted_bce": {"nvum#loss": "logit_adjusted_bce"},
    # plain BCE, validated and tested through an EMA teacher (decay 0.99)
    "bce_ema": {"nvum#loss": "bce", "nvum#use_teacher": True},
    # NVUM as in the paper: dot REG, memory updated once per epoch
    "nvum_epoch": {"nvum#loss": "nvum", "nvum#memory_schedule": "epoch"},
    # NVUM as in the authors' code: per-iteration update from an EMA teacher, elementwise REG,
    # memory mixing, clamping of p
    "nvum_iteration": {"nvum#loss": "nvum", "nvum#memory_schedule": "iteration", "nvum#use_teacher": True, "nvum#reg": "elementwise", "nvum#mix_memory": True, "nvum#reg_clamp": 1e-4},
    # ablation: memory without the prior, prior added to the logits inside REG
    "prior_on_reg": {"nvum#loss": "nvum", "nvum#unbiased_memory": False, "nvum#prior_in_reg": True},
    # ablation: memory without the prior, prior inside both BCE and REG
    "prior_on_bce_and_reg": {"nvum#loss": "nvum", "nvum#unbiased_memory": False, "nvum#prior_in_bce": True, "nvum#prior_in_reg": True},
}

#: The paper's ablation rows (Fig. 2, left): label -> method. The paper's fifth row, the prior in
#: both BCE and REG, is the method ``prior_on_bce_and_reg`` (left out of the default table for time).
ABLATION_ROWS = {
    "BCE only": "bce",
    "prior on BCE only": "logit_adjusted_bce",
    "prior on REG only": "prior_on_reg",
    "NVUM (prior in the memory)": "nvum_epoch",
}


@dataclasses.dataclass(frozen=True)
class Regime:
    """Data size and length of a run.

    Args:
        num_training, num_validation: sizes of the noisy splits.
        num_test: size of each clean test split (in-distribution and shifted).
        max_epochs: training epochs (learning rate x0.1 at 70% and 90% of them, as train.json).
    """

    num_training: int
    num_validation: int
    num_test: int
    max_epochs: int


#: The regimes. ``memorisation``: few training images and many epochs, so that plain BCE goes on
#: fitting the noisy training labels (its training BCE falls from 3.2 after 4 epochs to 1.1-1.2
#: after 20; bundle/docs/results.md says how far that gets); ``short``: four times the images, three
#: epochs (under-fitted); ``quick``: a check of the whole pipeline. Sizes are set by the time
#: budget of the full benchmark (40 min measured on two CPU cores; the budget is an hour).
REGIMES: dict[str, Regime] = {
    "memorisation": Regime(num_training=500, num_validation=300, num_test=500, max_epochs=20),
    "short": Regime(num_training=2000, num_validation=300, num_test=500, max_epochs=3),
    "quick": Regime(num_training=512, num_validation=256, num_test=256, max_epochs=3),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the matrix."""

    noise: str
    regime: str
    method: str
    seed: int
    beta: float | None = None  # memory momentum override (beta sweep)
    curve: bool = True  # evaluate the clean test splits after every epoch (else at best and last only)
    extra: tuple = ()  # further ((config id, value), ...) overrides, e.g. (("learning_rate", 3e-4),)

    @property
    def name(self) -> str:
        beta = f"_beta{self.beta:g}" if self.beta is not None else ""
        extra = "".join(f"_{k.replace('#', '-')}{v:g}" if isinstance(v, float) else f"_{k.replace('#', '-')}{v}" for k, v in self.extra)
        return f"{noise_slug(self.noise)}_{self.regime}_{self.method}{beta}{extra}_seed{self.seed}"

    def overrides(self) -> dict:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHODS)}")
        out = dict(METHODS[self.method])
        if self.beta is not None:
            out["nvum#memory_momentum"] = float(self.beta)
        out.update(dict(self.extra))
        return out


def dataset_params(noise: str, regime: Regime, data_seed: int = 0) -> dict:
    """Parameters of the synthetic set of a (noise, regime) pair (``custom.synthetic_datalist``)."""
    return {
        "seed": data_seed,
        "num_training": regime.num_training,
        "num_validation": regime.num_validation,
        "num_test": regime.num_test,
        "num_test_shifted": regime.num_test,
        "image_size": 32,
        "noise": noise,
    }


#: the methods of the main table, in order.
DEFAULT_METHODS = "bce,logit_adjusted_bce,bce_ema,nvum_epoch,nvum_iteration"
#: the memory momentum of train.json (runs with this beta are the plain nvum_epoch runs).
DEFAULT_BETA = 0.9


def split_list(value, cast=str) -> list:
    """A command-line list: ``"a,b"``, ``("a", "b")`` (fire parses ``a,b`` to a tuple) or one value."""
    if value is None:
        return []
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    return [cast(v) for v in items]


def build_plan(noise: Sequence[str], methods: Sequence[str], seeds: int = 3, regime: str = "memorisation", short_regime: str | None = "short", stress_seeds: int = 1, short_seeds: int = 1, ablation_seeds: int = 1, betas: Sequence[float] = (0.1, 0.5, 0.9), beta_seeds: int = 1, stress_regime: str | None = None) -> dict[str, list[Run]]:
    """The runs of each part of the benchmark (a run shared by two parts is listed in both).

    Parts:
        ``main``: the first noise model, ``regime``, every method, ``seeds`` seeds, with curves.
        ``stress``: the other noise models, ``stress_regime`` (default: ``short_regime``, else
        ``regime``), every method, ``stress_seeds`` seeds, with curves.
        ``short``: the first noise model, ``short_regime``, every method, ``short_seeds`` seeds, with curves.
        ``ablation``: the first noise model, ``regime``, the methods of :data:`ABLATION_ROWS`,
        ``ablation_seeds`` seeds (runs of ``main`` reused).
        ``beta``: the first noise model, ``regime``, ``nvum_epoch`` with each memory momentum,
        ``beta_seeds`` seeds (beta = 0.9 is the ``main`` run).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {sorted(METHODS)}")
    if not noise:
        raise ValueError("give at least one noise model (e.g. --noise report)")
    for b in betas:
        if not 0.0 <= b < 1.0:
            raise ValueError(f"memory momentum beta must be in [0, 1), got {b}")
    head = noise[0]
    plan = {"main": [Run(head, regime, m, s) for m in methods for s in range(seeds)]}
    stress_regime = stress_regime or short_regime or regime
    plan["stress"] = [Run(n, stress_regime, m, s) for n in noise[1:] for m in methods for s in range(stress_seeds)]
    plan["short"] = [Run(head, short_regime, m, s) for m in methods for s in range(short_seeds)] if short_regime else []
    main = {r.name: r for r in plan["main"]}

    def reuse(run: Run) -> Run:
        return main.get(run.name, dataclasses.replace(run, curve=False))

    plan["ablation"] = [reuse(Run(head, regime, m, s)) for m in ABLATION_ROWS.values() for s in range(ablation_seeds)]
    plan["beta"] = [reuse(Run(head, regime, "nvum_epoch", s, None if math.isclose(b, DEFAULT_BETA) else float(b))) for b in betas for s in range(beta_seeds)]
    return plan


def unique_runs(plan: dict[str, list[Run]]) -> list[Run]:
    """Every run of the plan once, curve runs first (they take longest)."""
    seen: dict[str, Run] = {}
    for runs in plan.values():
        for run in runs:
            seen.setdefault(run.name, run)
    return sorted(seen.values(), key=lambda r: not r.curve)

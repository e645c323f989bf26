"""The noise benchmark's matrix: methods and regimes (overrides of train.json ids), runs, and the plan.

See :mod:`custom.tools.noise_benchmark` for what the benchmark does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from ...data.synthetic import noise_slug

#: Methods: overrides of the ``nvum`` settings of train.json (every other id keeps its value).
#: Each method spells out its memory update order and teacher, so a change of train.json's
#: defaults does not change what a row of the benchmark measures.
METHODS: dict[str, dict] = {
    # plain BCE (CheXNet-style), BCE summed over classes
    "bce": {"nvum#loss": "bce", "nvum#use_teacher": False},
    # BCE on z + log(pi) at train time (= the paper's "prior on BCE" ablation row)
    "logit_adjusted_bce": {"nvum#loss": "logit_adjusted_bce", "nvum#use_teacher": False},
    # plain BCE, validated, tested and saved through an EMA teacher whose half-life is one epoch
    "bce_ema": {"nvum#loss": "bce", "nvum#use_teacher": True, "nvum#teacher_halflife_epochs": 1.0},
    # NVUM as in the paper: dot REG, each memory row updated when its batch is visited, before the loss (eq. 3)
    "nvum": {"nvum#loss": "nvum", "nvum#memory_schedule": "epoch", "nvum#update_before_loss": True,
             "nvum#use_teacher": False},
    # the paper's NVUM (memory from the student's logits, updated before the loss), validated, tested,
    # saved and exported through an EMA teacher whose half-life is one epoch
    "nvum_ema": {"nvum#loss": "nvum", "nvum#memory_schedule": "epoch", "nvum#update_before_loss": True,
                 "nvum#use_teacher": True, "nvum#teacher_halflife_epochs": 1.0},
    # the same as nvum with every row updated at the end of the epoch (epoch k reads the memory of epoch k - 1)
    "nvum_epoch_end": {"nvum#loss": "nvum", "nvum#memory_schedule": "epoch", "nvum#update_before_loss": False,
                       "nvum#use_teacher": False},
    # NVUM as in the authors' code: memory updated before the loss from an EMA teacher (half-life one
    # epoch), elementwise REG, memory mixing, clamping of p
    "nvum_iteration": {"nvum#loss": "nvum", "nvum#memory_schedule": "iteration", "nvum#update_before_loss": True,
                       "nvum#use_teacher": True, "nvum#teacher_halflife_epochs": 1.0, "nvum#reg": "elementwise",
                       "nvum#mix_memory": True, "nvum#reg_clamp": 1e-4},
    # NVUM without the class prior (the memory stores plain logits; paper's appendix)
    "nvum_no_prior": {"nvum#loss": "nvum", "nvum#update_before_loss": True, "nvum#unbiased_memory": False,
                      "nvum#use_teacher": False},
    # ablation: memory without the prior, prior added to the logits inside REG
    "prior_on_reg": {"nvum#loss": "nvum", "nvum#update_before_loss": True, "nvum#unbiased_memory": False,
                     "nvum#prior_in_reg": True, "nvum#use_teacher": False},
    # ablation: memory without the prior, prior inside both BCE and REG
    "prior_on_bce_and_reg": {"nvum#loss": "nvum", "nvum#update_before_loss": True, "nvum#unbiased_memory": False,
                             "nvum#prior_in_bce": True, "nvum#prior_in_reg": True, "nvum#use_teacher": False},
}

#: The NVUM-family methods the default recipe is chosen from (see :mod:`.targets`), the paper's form first.
NVUM_FAMILY = ("nvum", "nvum_ema")

#: The paper's ablation rows (Fig. 2, left): label -> method.
ABLATION_ROWS = {
    "BCE only": "bce",
    "prior on BCE only": "logit_adjusted_bce",
    "prior on REG only": "prior_on_reg",
    "prior on BCE and REG": "prior_on_bce_and_reg",
    "NVUM (prior in the memory)": "nvum",
}

#: Networks a regime trains (``network_def`` overrides); ``None`` keeps train.json's DenseNet121.
NETWORKS: dict[str, dict | None] = {
    # a CIFAR-style ResNet from MONAI (3x3 stride-1 stem, no max-pool, basic blocks), narrowed for the CPU:
    # it keeps the 32 px resolution in its first stage, where the synthetic patterns are 1-4 px wide
    "resnet_cifar": {"_target_": "custom.build_network", "name": "ResNet", "num_classes": "@num_classes",
                     "block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128], "spatial_dims": 2,
                     "n_input_channels": 3, "conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True},
    "densenet121": None,
}


@dataclasses.dataclass(frozen=True)
class Regime:
    """The data and the recipe of a run (everything but the method).

    Args:
        num_training, num_validation: sizes of the noisy splits.
        num_test, num_test_shifted: sizes of the clean test splits (in-distribution, shifted).
        max_epochs, batch_size, learning_rate: the recipe (Adam).
        schedule: ``"cosine"`` (learning rate annealed to 0 over the epochs, per epoch) or
            ``"step"`` (train.json's MultiStepLR: x0.1 at 70% and 90% of the epochs, given as epochs).
        network: a key of :data:`NETWORKS`.
        image_size: image height and width.
        eval_every: measure the curve (clean-test AUC on ``curve_size`` images of each test split,
            and the wrong labels fitted on ``curve_size`` training images) every this many epochs
            and at the last epoch.
        curve_size: images of each test split, and of the training split, in the curve (0: all);
            the selected and last figures are always measured on the whole splits.
        channels_last: store images and weights channels-last (1.3-1.5x faster training of the
            ResNet on a CPU).
        device: ``"cpu"`` or ``"cuda"`` (a ``cuda`` regime runs only where CUDA is available).
    """

    num_training: int
    num_validation: int
    num_test: int
    num_test_shifted: int
    max_epochs: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    schedule: str = "step"
    network: str = "densenet121"
    image_size: int = 32
    eval_every: int = 1
    curve_size: int = 0
    channels_last: bool = False
    device: str = "cpu"

    def overrides(self) -> dict:
        """The train.json overrides of the recipe."""
        out = {"max_epochs": self.max_epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
               "image_size": self.image_size, "channels_last": self.channels_last}
        if NETWORKS[self.network] is not None:
            out["network_def"] = NETWORKS[self.network]
        if self.schedule == "cosine":
            out["lr_scheduler"] = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "optimizer": "@optimizer",
                                   "T_max": "@max_epochs"}
        elif self.schedule == "step":
            out["lr_milestones"] = [max(1, round(f * self.max_epochs)) for f in (0.7, 0.9)]
        else:
            raise ValueError(f"unknown learning-rate schedule {self.schedule!r}; expected 'cosine' or 'step'")
        return out


#: The regimes. ``cpu``: the headline (see bundle/docs/results.md for how it was chosen); ``quick``: a
#: check of the whole pipeline in minutes; ``gpu``: DenseNet121
#: at 64 px, run only where CUDA is available.
REGIMES: dict[str, Regime] = {
    "cpu": Regime(num_training=2000, num_validation=1000, num_test=5000, num_test_shifted=5000, max_epochs=36,
                  batch_size=32, learning_rate=2e-3, schedule="cosine", network="resnet_cifar", eval_every=4,
                  curve_size=1000, channels_last=True),
    "quick": Regime(num_training=512, num_validation=256, num_test=512, num_test_shifted=512, max_epochs=4,
                    batch_size=32, learning_rate=2e-3, schedule="cosine", network="resnet_cifar", eval_every=2,
                    channels_last=True),
    "gpu": Regime(num_training=8000, num_validation=2000, num_test=5000, num_test_shifted=5000, max_epochs=30,
                  batch_size=64, learning_rate=1e-3, schedule="cosine", network="densenet121", image_size=64,
                  device="cuda"),
}


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the matrix."""

    noise: str
    regime: str
    method: str
    seed: int
    beta: float | None = None  # memory momentum override (beta sweep)
    curve: bool = True  # evaluate the clean test splits during training (else at best and last only)
    extra: tuple = ()  # further ((config id, value), ...) overrides, e.g. (("learning_rate", 3e-4),)
    data_seed: int = 0  # the draw of the synthetic set (its generator's seed)

    @property
    def name(self) -> str:
        beta = f"_beta{self.beta:g}" if self.beta is not None else ""
        extra = "".join(
            f"_{k.replace('#', '-')}{v:g}" if isinstance(v, float) else f"_{k.replace('#', '-')}{v}"
            for k, v in self.extra
        )
        draw = f"_data{self.data_seed}" if self.data_seed else ""
        return f"{noise_slug(self.noise)}_{self.regime}_{self.method}{beta}{extra}_seed{self.seed}{draw}"

    def overrides(self, regimes: dict[str, Regime] | None = None) -> dict:
        """The train.json overrides of the run: its regime's recipe, its method, beta and extras."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {sorted(METHODS)}")
        out = (regimes or REGIMES)[self.regime].overrides()
        out.update(METHODS[self.method])
        if self.beta is not None:
            out["nvum#memory_momentum"] = float(self.beta)
        out.update(dict(self.extra))
        return out


def dataset_params(noise: str, regime: Regime, data_seed: int = 0) -> dict:
    """Parameters of the synthetic set of a (noise, regime) pair (``custom.data.synthetic.synthetic_datalist``)."""
    return {
        "seed": data_seed,
        "num_training": regime.num_training,
        "num_validation": regime.num_validation,
        "num_test": regime.num_test,
        "num_test_shifted": regime.num_test_shifted,
        "image_size": regime.image_size,
        "noise": noise,
    }


#: the methods of the main table, in order (run on every draw of the data).
DEFAULT_METHODS = "bce,bce_ema,nvum,nvum_ema"
#: the further baselines of the ``--extended`` plan (first draw only, no curve).
EXTENDED_METHODS = ("logit_adjusted_bce", "nvum_iteration")
#: the draws of the synthetic set (generator seeds) of the main table.
DEFAULT_DATA_SEEDS = "0,1"
#: the draws of the head-to-head rule (:mod:`.targets`): never run before that rule was committed.
NEW_DRAWS = (2, 3)
#: the memory momentum of train.json (runs with this beta are the plain ``nvum`` runs).
DEFAULT_BETA = 0.9
#: the stress rows: noise models other than the headline's, and the methods run on them.
STRESS_NOISE = "symmetric:0.2,symmetric:0.4,bomd:0.2,0.2"
STRESS_METHODS = ("bce", "nvum", "nvum_no_prior")
#: the methods of the clean-label rows (the ceiling of the task).
CLEAN_METHODS = ("bce", "nvum")


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


def build_plan(noise: str, methods: Sequence[str], seeds: int = 5, regime: str = "cpu", clean_seeds: int = 2,
               stress_noise: Sequence[str] = (), stress_methods: Sequence[str] = STRESS_METHODS, stress_seeds: int = 1,
               ablation_seeds: int = 0, order_seeds: int = 0, betas: Sequence[float] = (),
               beta_seeds: int = 0, data_seeds: Sequence[int] = (0,), more_methods: Sequence[str] = (),
               more_seeds: int = 0, clean_methods: Sequence[str] = CLEAN_METHODS) -> dict[str, list[Run]]:
    """The runs of each part of the benchmark (a run shared by two parts is listed in both).

    Parts:
        ``main``: ``noise`` (the headline noise model), ``regime``, every method, every draw of
        ``data_seeds``, ``seeds`` training seeds per draw, with curves.
        ``clean``: clean labels (``noise none``), ``regime``, ``clean_methods``, ``clean_seeds``
        seeds, first draw: the ceiling of the task.
    The parts of the ``--extended`` plan, all on the first draw, evaluated at their selected and
    last epochs only (no curve) unless they are ``main`` runs:
        ``more``: further baselines, ``more_methods`` x ``more_seeds`` seeds (with the ``main``
        ``bce`` runs of the first draw, to pair with).
        ``stress``: each of ``stress_noise``, ``regime``, ``stress_methods``, ``stress_seeds`` seeds.
        ``order``: the memory update order, ``nvum`` (before the loss) against ``nvum_epoch_end``,
        ``order_seeds`` seeds (``main`` runs reused).
        ``ablation``: ``noise``, ``regime``, the methods of :data:`ABLATION_ROWS`, ``ablation_seeds`` seeds.
        ``beta``: ``noise``, ``regime``, ``nvum`` with each memory momentum, ``beta_seeds`` seeds.
    """
    unknown = [m for m in list(methods) + list(stress_methods) + list(more_methods) + list(clean_methods)
               if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected some of {sorted(METHODS)}")
    for b in betas:
        if not 0.0 <= b < 1.0:
            raise ValueError(f"memory momentum beta must be in [0, 1), got {b}")
    data_seeds = [int(d) for d in data_seeds]
    if not data_seeds or len(set(data_seeds)) != len(data_seeds):
        raise ValueError(f"data_seeds must be distinct draws, at least one, got {data_seeds}")
    first = data_seeds[0]
    plan = {"main": [Run(noise, regime, m, s, data_seed=d) for d in data_seeds for m in methods for s in range(seeds)]}
    main = {r.name: r for r in plan["main"]}

    def reuse(run: Run) -> Run:
        run = dataclasses.replace(run, data_seed=first)
        return main.get(run.name, dataclasses.replace(run, curve=False))

    plan["clean"] = [Run("none", regime, m, s, data_seed=first) for m in clean_methods for s in range(clean_seeds)]
    more = [reuse(Run(noise, regime, m, s)) for m in more_methods for s in range(more_seeds)]
    plan["more"] = [reuse(Run(noise, regime, "bce", s)) for s in range(more_seeds)] + more if more else []
    plan["stress"] = [
        reuse(Run(n, regime, m, s)) for n in stress_noise for m in stress_methods for s in range(stress_seeds)
    ]
    plan["order"] = [reuse(Run(noise, regime, m, s)) for m in ("nvum", "nvum_epoch_end") for s in range(order_seeds)]
    plan["ablation"] = [reuse(Run(noise, regime, m, s)) for m in ABLATION_ROWS.values() for s in range(ablation_seeds)]
    plan["beta"] = [reuse(Run(noise, regime, "nvum", s, None if math.isclose(b, DEFAULT_BETA) else float(b)))
                    for b in betas for s in range(beta_seeds)]
    return plan


def unique_runs(plan: dict[str, list[Run]]) -> list[Run]:
    """Every run of the plan once, curve runs first (they take longest)."""
    seen: dict[str, Run] = {}
    for runs in plan.values():
        for run in runs:
            seen.setdefault(run.name, run)
    return sorted(seen.values(), key=lambda r: not r.curve)

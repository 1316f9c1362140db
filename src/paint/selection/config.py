"""The one selection config: how a mixing coefficient is chosen on validation data, in every command.

Default (the same in ``paint patch``, ``paint multitask``, ``paint transfer``, the case studies and
the demo): the paper's intent, "improve the patching task a lot while the supported tasks stay
within about one point": evaluate the 11-point grid 0, 0.1, ..., 1 and take the largest mean
patching accuracy whose **mean** support accuracy is within ``epsilon`` = 1 point of zero-shot.
The mean is bounded rather than every task because the paper holds one number (ImageNet) within a
point; bounding each task (``constraint: each``) is stricter and is always reported beside it.

The grid is raced by default (``race: auto``): alpha 0 and 1 read every validation image, the
inner alphas race on the images not right at both ends, and the winner is confirmed on every image
(:mod:`paint.selection.screening`) for the constrained objective; it chose the full grid's alpha on
every one of 167 selection problems measured, reading 36% of its images on average. ``race: null`` (``--no-race``) reads every image at every alpha (the demo
does, to plot the whole validation curve).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from paint.config import StrictModel

PAPER_GRID: tuple[float, ...] = tuple(round(i / 10, 10) for i in range(11))
DEFAULT_SEARCH_BUDGET = 11

Strategy = Literal["grid", "bounded", "quasiconvex", "derivative", "boundary", "surrogate", "lines", "blockwise"]
ObjectiveName = Literal["constrained", "mean_accuracy", "loss_sum", "entropy"]
Constraint = Literal["each", "mean"]


class BlockwiseConfig(StrictModel):
    """The gradient search of ``strategy: blockwise`` (see :mod:`paint.selection.blockwise`)."""

    steps: int = Field(40, ge=1, le=10000, description="Adam steps on the per-block coefficients")
    lr: float = Field(0.01, gt=0.0, le=1.0, description="Adam step size, cosine-decayed (coefficients live in [0, 1])")
    eval_every: int = Field(4, ge=1, description="measure the iterate on validation every this many steps")
    batch: int = Field(128, ge=1, description="images per task in the gradient's loss (a fixed, seeded sample)")
    support_loss: Literal["kl", "ce"] = Field("kl", description="kl: to the zero-shot predictions (no labels); ce")
    multiplier: float = Field(1.0, gt=0.0, description="initial weight lambda of the support term")
    dual_lr: float = Field(0.5, ge=0.0, le=10.0, description="step of lambda's dual ascent (0: lambda fixed)")
    seed: int = 0


class RaceConfig(StrictModel):
    """``strategy: grid`` with ``race``: candidates read a growing share of the validation images and drop out
    once their intervals rule them out (:mod:`paint.selection.racing`). ``race: auto`` (the default) is the race
    screened by the line's ends for the constrained objective; see :meth:`SelectionConfig.race_settings`."""

    first: float = Field(0.1, gt=0.0, le=1.0, description="the first round's share of each task's images")
    growth: float = Field(2.0, gt=1.0, le=16.0, description="each round reads this many times more images")
    z: float = Field(2.5, gt=0.0, le=10.0, description="standard errors a difference must clear to drop a candidate")
    screen: bool = Field(
        False,
        description="race on the images not right at both alpha 0 and alpha 1 only, then confirm the winner "
        "on the rest (paint.selection.screening); race: auto turns it on",
    )


class SelectionConfig(StrictModel):
    """How alpha is chosen on validation. ``epsilon`` is in accuracy points (1.0 = one point).

    ``strategy: grid`` chooses among the alphas of ``alphas`` (0 and 1 always added; raced by
    default, see ``race``); the other strategies search [0, 1] within ``budget`` model evaluations
    (the zero-shot reference included). ``lines`` and ``blockwise`` choose one alpha per block of the image tower
    (:mod:`paint.selection.blockwise`); ``entropy`` is the label-free objective they offer.
    ``objective`` is what is optimised; every rule's choice on the evaluated points is reported
    beside the configured one.

    Example:
        >>> from paint import SelectionConfig
        >>> cfg = SelectionConfig()  # the default everywhere: 11-point grid, support mean within 1 point
        >>> cfg.rule_name, cfg.points()[:3], cfg.max_evals()
        ('constrained-mean', [0.0, 0.1, 0.2], 11)
        >>> SelectionConfig(strategy="bounded", objective="mean_accuracy", budget=6).max_evals()
        6
    """

    strategy: Strategy = "grid"
    objective: ObjectiveName = "constrained"
    constraint: Constraint = Field("mean", description="constrained: bound the support tasks' mean, or each task")
    epsilon: float = Field(1.0, ge=0.0, le=100.0, description="allowed support drop, accuracy points")
    alphas: list[float] = Field(default_factory=lambda: list(PAPER_GRID), min_length=1, description="grid strategy")
    allow_extrapolation: bool = Field(False, description="grid alphas outside [0, 1]")
    budget: int | None = Field(None, ge=1, description="most model evaluations; default: the grid, or 11")
    xtol: float = Field(1e-3, gt=0.0, description="stop when alpha is known to within this")
    blockwise: BlockwiseConfig = Field(default_factory=BlockwiseConfig)
    race: RaceConfig | Literal["auto"] | None = Field(
        "auto",
        description="grid only: race the candidates over growing image subsets; auto (the default): the race "
        "screened by the line's ends for objective constrained (alphas in [0, 1], no bound_confidence), the "
        "plain grid otherwise; null or false: every alpha reads every image",
    )
    bound_confidence: float | None = Field(
        None,
        gt=0.5,
        lt=1.0,
        description="constrained: hold the support change's one-sided lower confidence bound (paired over the "
        "validation images) within epsilon, not its point estimate; e.g. 0.95 (null: the point estimate)",
    )

    @field_validator("race", mode="before")
    @classmethod
    def _race_off(cls, value: Any) -> Any:
        """``race: false`` is ``race: null`` (off)."""
        return None if value is False else value

    @model_validator(mode="after")
    def _consistent(self):
        bad = [a for a in self.alphas if not 0.0 <= a <= 1.0]
        if bad and not self.allow_extrapolation:
            raise ValueError(
                f"alpha {bad[0]} is outside [0, 1]; set selection.allow_extrapolation: true to extrapolate"
            )
        if self.allow_extrapolation and self.strategy != "grid":
            raise ValueError("allow_extrapolation needs strategy 'grid' (the searches stay in [0, 1])")
        if self.strategy == "derivative" and self.objective != "loss_sum":
            raise ValueError("strategy 'derivative' needs objective 'loss_sum' (accuracy has no derivative)")
        if self.strategy == "boundary" and self.objective != "constrained":
            raise ValueError("strategy 'boundary' needs objective 'constrained' (it bisects the support constraint)")
        if self.objective == "entropy" and self.strategy not in ("grid", "lines", "blockwise"):
            raise ValueError("objective 'entropy' needs strategy 'grid', 'lines' or 'blockwise'")
        if self.bound_confidence is not None and self.objective != "constrained":
            raise ValueError(f"bound_confidence needs objective 'constrained', not {self.objective!r}")
        if self.bound_confidence is not None and self.strategy in ("lines", "blockwise", "derivative"):
            raise ValueError(
                f"bound_confidence needs per-image validation results, which strategy {self.strategy!r} does not keep"
            )
        if isinstance(self.race, RaceConfig) and (
            self.strategy != "grid" or self.objective not in ("constrained", "mean_accuracy")
        ):
            raise ValueError("race needs strategy 'grid' with objective 'constrained' or 'mean_accuracy'")
        if isinstance(self.race, RaceConfig) and self.race.screen and any(not 0.0 <= a <= 1.0 for a in self.points()):
            raise ValueError("race.screen races alphas in [0, 1] only (it screens images by the line's ends)")
        if isinstance(self.race, RaceConfig) and self.bound_confidence is not None:
            raise ValueError("race and bound_confidence cannot be combined (the race holds the point estimate)")
        if self.strategy != "grid" and self.budget is not None and self.budget < 3:
            raise ValueError(f"strategy {self.strategy!r} needs a budget of at least 3 evaluations")
        return self

    def race_settings(self) -> RaceConfig | None:
        """The race this selection runs, or None for the plain grid (every alpha reads every image).

        ``race: auto`` (the default) is the race screened by the line's ends (``RaceConfig(screen=True)``)
        where it was measured to keep the grid's choice reading well under half the images: strategy
        ``grid``, objective ``constrained`` (either constraint), alphas in [0, 1], no
        ``bound_confidence``; the plain grid elsewhere (``mean_accuracy`` races only when asked:
        it reads 41% on average there). ``race: null`` turns it off.

        Example:
            >>> SelectionConfig().race_settings().screen, SelectionConfig(race=None).race_settings()
            (True, None)
            >>> SelectionConfig(objective="mean_accuracy").race_settings() is None  # auto: not this objective
            True
        """
        if self.race != "auto":
            return self.race
        applies = (
            self.strategy == "grid"
            and self.objective == "constrained"
            and self.bound_confidence is None
            and all(0.0 <= a <= 1.0 for a in self.points())
        )
        return RaceConfig(screen=True) if applies else None

    def points(self) -> list[float]:
        """The grid: ``alphas`` with 0 and 1 added, sorted."""
        return sorted({0.0, 1.0, *(float(a) for a in self.alphas)})

    def max_evals(self) -> int:
        """The evaluation budget: ``budget``, or every grid point, or 11 for a search."""
        if self.budget is not None:
            return self.budget
        if self.strategy == "lines":
            return len(self.points()) ** 2 + 16  # the 2-D grid and a pattern search around its best
        if self.strategy == "blockwise":  # the grid (alpha 0 is the reference), an iterate every eval_every steps
            return len(self.points()) + -(-self.blockwise.steps // self.blockwise.eval_every)
        return len(self.points()) if self.strategy == "grid" else DEFAULT_SEARCH_BUDGET

    @property
    def uses_derivative(self) -> bool:
        """Whether the search evaluates dL/dalpha along the line (``derivative``; ``surrogate`` on ``loss_sum``)."""
        return self.strategy == "derivative" or (self.strategy == "surrogate" and self.objective == "loss_sum")

    @property
    def rule_name(self) -> str:
        """How the configured choice is reported: ``constrained-mean``, ``constrained-each``, ``mean``, ``loss_sum``."""
        return rule_key(self.objective, self.constraint)


def rule_key(objective: str, constraint: str = "mean") -> str:
    """The reported name of an objective: ``mean`` (mean_accuracy), ``constrained-<constraint>``, ``loss_sum``."""
    if objective in ("mean", "mean_accuracy"):
        return "mean"
    if objective == "constrained":
        return f"constrained-{constraint}"
    return objective


OLD_SELECTION_FIELDS = ("sweep", "search", "rule", "alphas", "epsilon", "constraint")


class SelectionFields(StrictModel):
    """Base of every run config that chooses alpha: one ``selection`` field, the same default everywhere.

    Configs written before the selection fields were unified (``sweep:``, ``search:``, top-level
    ``rule`` / ``alphas``) get a one-line migration hint instead of a bare "unknown field".
    """

    selection: SelectionConfig = Field(default_factory=SelectionConfig)

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = [k for k in OLD_SELECTION_FIELDS if k in data]
            if old:
                raise ValueError(
                    f"{old[0]!r} is now part of 'selection' (strategy, objective, constraint, epsilon, alphas, budget), "
                    "e.g. selection: {strategy: grid, alphas: [0.0, 0.5, 1.0]}"
                )
        return data

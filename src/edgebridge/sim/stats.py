"""Success counts compared the way a reader of a benchmark table needs: with their sampling noise.

Fifty episodes per cell measure a success rate to within several points, so "49/50 vs 50/50" says
nothing and "48/50 vs 31/50" says a lot. :func:`compare_success` puts a Wilson 95 % interval on each
rate and a one-sided Fisher exact test on the difference, and names the outcome: ``above``, ``below``
or ``level`` (the counts do not differ beyond the sampling noise at ``alpha``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import check


@dataclass(frozen=True)
class SuccessComparison:
    """A candidate's successes against a baseline's, over independent episodes."""

    k: int
    n: int
    k_baseline: int
    n_baseline: int
    ci95: tuple[float, float]
    ci95_baseline: tuple[float, float]
    p_above: float  # one-sided Fisher exact p-value for "candidate rate > baseline rate"
    p_below: float  # ... for "candidate rate < baseline rate"
    verdict: str  # "above", "below" or "level"

    @property
    def rate(self) -> float:
        return self.k / self.n

    @property
    def rate_baseline(self) -> float:
        return self.k_baseline / self.n_baseline


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a success rate ``k / n``."""
    from scipy.stats import binomtest

    _check_counts(k, n, "k/n")
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def compare_success(k: int, n: int, k_baseline: int, n_baseline: int, alpha: float = 0.05) -> SuccessComparison:
    """Compare ``k / n`` successes with a baseline's ``k_baseline / n_baseline`` (both over independent
    episodes): Wilson intervals and one-sided Fisher exact tests; ``verdict`` is ``above`` / ``below`` when
    that test's p-value is under ``alpha``, else ``level``."""
    from scipy.stats import fisher_exact

    _check_counts(k, n, "k/n")
    _check_counts(k_baseline, n_baseline, "k_baseline/n_baseline")
    check(0 < alpha < 1, "alpha", f"must lie in (0, 1), got {alpha}")
    table = [[k, n - k], [k_baseline, n_baseline - k_baseline]]
    p_above = float(fisher_exact(table, alternative="greater")[1])
    p_below = float(fisher_exact(table, alternative="less")[1])
    verdict = "above" if p_above < alpha else "below" if p_below < alpha else "level"
    return SuccessComparison(k, n, k_baseline, n_baseline, wilson_interval(k, n),
                             wilson_interval(k_baseline, n_baseline), p_above, p_below, verdict)


def _check_counts(k: int, n: int, what: str) -> None:
    check(n >= 1 and 0 <= k <= n, what, f"need 0 <= successes <= episodes and episodes >= 1, got {k}/{n}")

"""Which layers to unlearn, from the traced effects, and how sure we are.

The rule reads every token group (first / middle / last subject token, last token), takes in each the
window of k layers with the largest mean indirect effect over facts, and keeps the group whose window
stands furthest above noise. Noise is measured, not assumed: the facts are resampled with replacement
(a bootstrap) and the whole choice is redone on each resample, so the spread includes the luck of
picking the best window. Confidence = window mean / bootstrap spread (a z-score).

Choosing the best of many windows and groups makes pure noise look confident (on 6 layers, 4 groups and
k = 2, the best z of pure noise has a median near 1.9 and a 95th percentile near 3.1), so the bar is not
a fixed number: each fact's effects are sign-flipped at random (no effect: every sign is as likely) and
the best mean over its spread, over every group and window, recorded; the 99th percentile of that is `noise_level`.
A window counts only with a positive effect and a confidence above both `min_confidence` and the noise
level; otherwise the trace stage refuses or falls back loudly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from amnesia.science.tracing.causal import GROUPS, FactTrace, token_groups

# The groups the automatic rule may choose from (ROME's first/subsequent tokens carry the prompt, not
# the subject's identity).
RULE_GROUPS = ("first subject token", "middle subject tokens", "last subject token", "last token")
MIN_FACTS = 7  # the fewest facts whose sign flips can put a window above the 99th percentile of noise


@dataclass
class Candidate:
    group: str
    layers: list[int]
    effect: float  # mean over facts of the window's mean indirect effect
    spread: float  # bootstrap std of that mean
    confidence: float  # effect / spread (−inf..inf; 0 when there is no spread and no effect)
    stability: float  # share of bootstrap resamples whose best window in this group is the same one
    facts: int


@dataclass
class LayerChoice:
    layers: list[int]
    kind: str
    group: str | None
    confidence: float
    effect: float
    confident: bool
    noise_level: float = 0.0  # what the best window of pure noise reaches (99th percentile, sign flips)
    fallback: bool = False
    warning: str | None = None  # a sentence, for people: the summary, the report, the stage's log
    code: str | None = None  # the same as an MLflow-safe token (tags take no free text)
    candidates: list[Candidate] = field(default_factory=list)

    def evidence(self) -> dict[str, object]:
        """JSON-ready, for aggregate.json (and so for the audit chain) and the report."""
        return asdict(self)


def per_fact_effects(traces: list[FactTrace], kind: str) -> np.ndarray:
    """[facts, groups, layers] mean indirect effect of each fact in each token group (NaN: group absent)."""
    layers = traces[0].scores[kind].shape[1]
    out = np.full((len(traces), len(GROUPS), layers), np.nan)
    for f, tr in enumerate(traces):
        effect = tr.effect(kind)
        for g, positions in enumerate(token_groups(len(tr.fact.ids), tr.fact.subject).values()):
            if positions:
                out[f, g] = effect[positions].mean(0)
    return out


def _window_means(effects: np.ndarray, k: int) -> np.ndarray:
    """[..., facts, layers] -> [..., windows]: the mean over facts of each k-layer window's mean."""
    per_fact = np.lib.stride_tricks.sliding_window_view(effects, k, axis=-1).mean(-1)
    return per_fact.mean(-2)


def _candidate(group: str, effects: np.ndarray, k: int, boot: np.ndarray) -> Candidate:
    """effects: [facts, layers] of one group; boot: [resamples, facts] indices."""
    means = _window_means(effects, k)
    best = int(np.argmax(means))  # ties go to the earlier window
    resampled = _window_means(effects[boot], k)  # [resamples, windows]
    spread = float(resampled[:, best].std())
    effect = float(means[best])
    confidence = effect / spread if spread > 0 else (np.inf if effect > 0 else 0.0)
    stability = float(np.mean(resampled.argmax(-1) == best))
    return Candidate(group, list(range(best, best + k)), effect, spread, float(confidence), stability, len(effects))


def _rows(effects: np.ndarray, groups: tuple[str, ...]) -> dict[str, np.ndarray]:
    """group -> [facts, layers] of the facts that have that group; groups with fewer than two are left out."""
    out = {}
    for name in groups:
        rows = effects[:, GROUPS.index(name)]
        rows = rows[~np.isnan(rows).any(-1)]
        if len(rows) >= 2:
            out[name] = rows
    return out


def candidates(
    effects: np.ndarray, k: int, groups: tuple[str, ...] = RULE_GROUPS, resamples: int = 200, seed: int = 0
) -> list[Candidate]:
    """The best window of each group that at least two facts have, strongest evidence first."""
    k = max(1, min(k, effects.shape[-1]))
    rng = np.random.default_rng(seed)
    out = []
    for name, rows in _rows(effects, groups).items():
        boot = rng.integers(0, len(rows), size=(resamples, len(rows)))
        out.append(_candidate(name, rows, k, boot))
    return sorted(out, key=lambda c: -c.confidence)


def noise_level(
    effects: np.ndarray, k: int, groups: tuple[str, ...] = RULE_GROUPS, flips: int = 200, seed: int = 0
) -> float:
    """The 99th percentile of the best window t-statistic over all groups when every fact's effects get a
    random sign: how confident the rule's choice looks when there is nothing there."""
    k = max(1, min(k, effects.shape[-1]))
    rng = np.random.default_rng(seed + 1)
    best = np.full(flips, -np.inf)
    for rows in _rows(effects, groups).values():
        per_fact = np.lib.stride_tricks.sliding_window_view(rows, k, axis=-1).mean(-1)  # [facts, windows]
        n = len(per_fact)
        signs = rng.choice([-1.0, 1.0], size=(flips, n))
        mean = signs @ per_fact / n  # [flips, windows]
        var = (per_fact**2).mean(0) - mean**2  # a sign flip leaves the second moment alone
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(var > 0, mean / np.sqrt(np.maximum(var, 0) / n), 0.0)  # the bootstrap's spread
        best = np.maximum(best, t.max(-1))
    return float(np.quantile(best, 0.99)) if np.isfinite(best).all() else 0.0


def choose(
    effects: np.ndarray,
    k: int,
    kind: str = "mlp",
    group: str = "auto",
    min_confidence: float = 2.0,
    fallback: list[int] | None = None,
    resamples: int = 200,
    seed: int = 0,
) -> LayerChoice:
    """The window to unlearn. Without signal above noise: the fallback layers with a warning, or
    `confident=False` and no layers (the caller refuses)."""
    groups = RULE_GROUPS if group == "auto" else (group,)
    found = candidates(effects, k, groups, resamples, seed)
    if not found:
        return LayerChoice([], kind, None, 0.0, 0.0, False, warning="fewer than two facts in every token group")
    best = found[0]
    level = noise_level(effects, k, groups, resamples, seed)
    choice = LayerChoice(best.layers, kind, best.group, best.confidence, best.effect, True, level, candidates=found)
    bar = max(min_confidence, level)
    if best.effect > 0 and best.confidence >= bar:
        return choice
    choice.confident = False
    noise = (
        f"no {kind} window has a positive effect above noise (best: {best.group}, layers {best.layers}, "
        f"effect {best.effect:+.4f}, confidence {best.confidence:.1f} < {bar:.1f})"
    )
    if best.facts < MIN_FACTS:  # 2^n sign patterns: under 7 facts, 1% of them is less than one
        noise += f"; {best.facts} facts cannot show it: trace at least {MIN_FACTS}"
    window = ",".join(map(str, best.layers))
    choice.code = (
        f"no-signal,group={best.group.replace(' ', '-')},layers=[{window}],effect={best.effect:.4f},"
        f"confidence={best.confidence:.1f},bar={bar:.1f},facts={best.facts}"
    )
    if fallback is None:
        choice.layers, choice.warning = [], noise
    else:
        choice.layers, choice.fallback = sorted(set(fallback)), True
        choice.warning = f"{noise}; FELL BACK to the configured layers {sorted(set(fallback))}"
        choice.code += f",fallback=[{','.join(map(str, choice.layers))}]"
    return choice

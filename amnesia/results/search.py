"""The settings search's result: every trial with its settings and gate margin, and the one chosen."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Value = float | int | str | bool


class Trial(BaseModel):
    number: int
    params: dict[str, Value]
    state: Literal["complete", "pruned", "failed"]
    origin: Literal["warm start", "random", "tpe"]
    steps: int  # optimizer steps run (a pruned trial: where it was stopped)
    stopped: str  # how its training ended (forget_target_met, epochs, …; pruned at step N; the error's class)
    seconds: float
    margin: float | None = None  # the smallest normalised gate margin without the attacks (Check.margin)
    tightest: str | None = None  # the check that set it
    attacked_margin: float | None = None  # with the attacks' checks too (the best `attack_top` trials only)
    attacked_tightest: str | None = None
    passed: bool | None = None  # every check of the gate cleared (with the attacks when they ran)
    figures: dict[str, float] = {}  # the gate's headline figures of this trial (scores, comparisons)
    curve: dict[int, float] = {}  # step -> what the pruner saw (min(forgotten share, kept share of held-out))


class SearchResult(BaseModel):
    uri: str  # the stored table and plot (no record text)
    method: str
    seed: int
    space: dict[str, dict[str, object]]
    trials: list[Trial]
    chosen: int  # the chosen trial's number
    params: dict[str, Value]  # its settings: what the unlearn stage then runs
    margin: float  # its margin, with the attacks when they ran
    passed: bool
    stopped: Literal["trials", "budget"]
    seconds: float
    warm_start: dict[str, Value] | None = None  # the start model's own settings, tried first
    parallel: int | None = None  # fanned out (a cluster's ParallelFor): this many trials at a time, in 2 rounds

    def counts(self) -> dict[str, int]:
        out = {"trials": len(self.trials)}
        for state in ("complete", "pruned", "failed"):
            out[state] = sum(t.state == state for t in self.trials)
        out["passed"] = sum(bool(t.passed) for t in self.trials)
        return out

    def table(self) -> tuple[list[str], list[list[str]]]:
        """(head, rows): one row per trial as the report, the reviewers' page and search.md show it."""
        names = sorted(self.space)
        head = ["trial", "origin", *[n.removeprefix("method_args.") for n in names], "state", "steps", "s",
                "margin", "closest check", "with attacks", "passes"]  # fmt: skip
        rows = []
        for t in self.trials:
            cells = [f"{t.number} (chosen)" if t.number == self.chosen else str(t.number), t.origin]
            cells += [_short(t.params[n]) if n in t.params else "" for n in names]
            cells += [t.state if t.state == "complete" else t.stopped, str(t.steps), f"{t.seconds:.0f}"]
            cells += [_signed(t.margin), t.attacked_tightest or t.tightest or "", _signed(t.attacked_margin),
                      "" if t.passed is None else "yes" if t.passed else "no"]  # fmt: skip
            rows.append(cells)
        return head, rows

    def note(self) -> str:
        """What the table is, for a reader who has not seen a search before."""
        warm = " Trial 0 was the start model's own settings (warm start)." if self.warm_start else ""
        how = (f" The trials ran {self.parallel} at a time in two rounds: the random startup draws, then TPE told "
               "their results, pruned against their curves." if self.parallel else "")
        return (f"Optuna TPE (seed {self.seed}) with a median pruner on the held-out curves; each finished trial "
                "scored by this gate's checks without the attacks, its margin the smallest over them (the share "
                "of the way from the bound to the ideal; below 0 fails); the attacks ran on the best only, and "
                f"chose.{warm}{how} Ended by: {self.stopped}.")

    def line(self) -> str:
        """One line for logs and summaries: how many trials, the chosen one and its margin."""
        c = self.counts()
        settings = ", ".join(f"{k.removeprefix('method_args.')}={_short(v)}" for k, v in sorted(self.params.items()))
        return (f"{c['trials']} trials ({c['pruned']} pruned, {c['passed']} passed) in {self.seconds:.0f} s; chose "
                f"trial {self.chosen} ({settings}), margin {self.margin:+.3f}, {'passes' if self.passed else 'FAILS'}")


def _short(v: Value) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.3f}"

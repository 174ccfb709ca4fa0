"""The gate's result: each check against its bound, the verdict and its reasons, the stored report."""

from __future__ import annotations

from pydantic import BaseModel

from amnesia.storage import layout as L
from amnesia.storage.artifacts import ArtifactStore
from amnesia.storage.uri import join


class Check(BaseModel):
    name: str
    value: float | None  # None: not measured (a failure: a floor on a missing figure cannot be cleared)
    floor: float  # the bound: a floor, or with ceiling=True a ceiling
    passed: bool
    ceiling: bool = False  # lower is better (an attack's recovery)

    def reason(self) -> str:
        bound = "ceiling" if self.ceiling else "floor"
        if self.value is None:
            return f"{self.name}: not measured ({bound} {self.floor:.3f})"
        sign = ("<=" if self.passed else ">") if self.ceiling else (">=" if self.passed else "<")
        return f"{self.name} {self.value:.3f} {sign} {bound} {self.floor:.3f}"

    def margin(self) -> float:
        """How far the check clears its bound, normalised so that every check reads alike: the share of the way
        from the bound to the ideal (1 for a floor, 0 for a ceiling); 0 on the bound, negative when it fails,
        -1 when not measured. What the settings search maximises (its smallest, over every check)."""
        if self.value is None:
            return -1.0
        if self.ceiling:
            return (self.floor - self.value) / self.floor if self.floor > 0 else (0.0 if self.value <= 0 else -1.0)
        return (self.value - self.floor) / (1 - self.floor) if self.floor < 1 else (0.0 if self.value >= 1 else -1.0)

    def code(self) -> str:
        """The same as an MLflow-safe token: name=value/floor (a ceiling: name=value/max<ceiling>)."""
        value = "none" if self.value is None else f"{self.value:.3f}"
        return f"{self.name}={value}/{'max' if self.ceiling else ''}{self.floor:.3f}"


OBLIGATION_PREFIX = "obligation."  # per earlier request: obligation.<request id>.forget_score
REQUEST_PREFIX = "request."  # per request of this run: request.<request id>.forget_score
PER_PERSON = (OBLIGATION_PREFIX, REQUEST_PREFIX)


def _rid(check: Check) -> str:
    return check.name.split(".", 1)[1].rsplit(".", 1)[0]


def _figure(check: Check) -> str:
    return check.name.rsplit(".", 1)[1]


def tag_codes(checks: list[Check], limit: int = 480) -> str:
    """Checks as one MLflow tag value (at most `limit` characters): every check but the per-person ones, which
    are counted by person (a person passes when all their checks do; the failed ones named while they fit);
    the report has each one."""
    plain = [c.code() for c in checks if not c.name.startswith(PER_PERSON)]
    failed = []
    for prefix, counted, word in ((REQUEST_PREFIX, "requests_forgotten", "remembers"),
                                  (OBLIGATION_PREFIX, "obligations_kept", "came_back")):  # fmt: skip
        people: dict[str, bool] = {}
        for c in checks:
            if c.name.startswith(prefix):
                people[_rid(c)] = people.get(_rid(c), True) and c.passed
        if people:
            bad = [f"{word}={rid}" for rid, ok in people.items() if not ok]
            plain.append(f"{counted}={len(people) - len(bad)}/{len(people)}")
            failed += bad
    for code in failed:
        if len(",".join([*plain, code])) > limit - 12:
            plain.append("and_more")
            break
        plain.append(code)
    return ",".join(plain) or "none"


class Verdict(BaseModel):
    passed: bool
    checks: list[Check]

    def margin(self) -> float:
        """The smallest normalised margin over the checks (Check.margin): >= 0 exactly when every check passes
        (1.0 when there is no check)."""
        return min((c.margin() for c in self.checks), default=1.0)

    def tightest(self) -> Check | None:
        return min(self.checks, key=lambda c: c.margin(), default=None)

    @property
    def reasons(self) -> list[str]:
        """The failed checks, or for a pass every check that was made (the earlier requests in one line:
        how many were kept, and the closest to its floor)."""
        failed = [c.reason() for c in self.checks if not c.passed]
        if failed:
            return failed
        plain = [c.reason() for c in self.checks if not c.name.startswith(PER_PERSON)]
        for prefix, what in ((REQUEST_PREFIX, "this run's requests: all {n} forgotten"),
                             (OBLIGATION_PREFIX, "earlier requests: all {n} still forgotten")):  # fmt: skip
            mine = [c for c in self.checks if c.name.startswith(prefix) and c.value is not None]
            people = [c for c in mine if _figure(c) == "forget_score"]
            if people:
                low = min(people, key=lambda c: c.value or 0.0)
                line = what.format(n=len({_rid(c) for c in mine})) + (
                    f" (lowest forget score {low.value:.3f}, {_rid(low)}; floor {low.floor:.3f}")
                for figure, label in (("extraction", "extraction share"), ("membership", "membership percentile")):
                    most = max((c for c in mine if _figure(c) == figure), key=lambda c: c.value or 0.0, default=None)
                    if most is not None:
                        line += f"; highest {label} {most.value:.3f}, {_rid(most)}; ceiling {most.floor:.3f}"
                plain.append(line + ")")
        return plain


class GateResult(BaseModel):
    passed: bool
    reasons: list[str]  # human-readable, with the numbers
    codes: list[str]  # the failed checks as name=value/floor (what the MLflow tag holds)
    checks: list[Check]
    report_uri: str  # folder: report.html, report.md, figures
    report_digest: str

    @classmethod
    def load(cls, store: ArtifactStore, uri: str) -> GateResult:
        """A stored verdict, read back from the report folder."""
        verdict = store.get_json(join(uri, L.VERDICT))
        checks = [Check.model_validate(c) for c in verdict.get("checks", [])]  # not stored before the registry
        return cls(passed=verdict["passed"], reasons=verdict["reasons"], codes=verdict["codes"], checks=checks,
                   report_uri=uri, report_digest=store.ref(uri).digest)  # fmt: skip

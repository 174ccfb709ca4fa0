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

    def code(self) -> str:
        """The same as an MLflow-safe token: name=value/floor (a ceiling: name=value/max<ceiling>)."""
        value = "none" if self.value is None else f"{self.value:.3f}"
        return f"{self.name}={value}/{'max' if self.ceiling else ''}{self.floor:.3f}"


class Verdict(BaseModel):
    passed: bool
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """The failed checks, or for a pass every check that was made."""
        failed = [c.reason() for c in self.checks if not c.passed]
        return failed if failed else [c.reason() for c in self.checks]


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

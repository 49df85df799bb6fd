"""Which of a bundle's variants a device serves: a PURE decision over measured trials.

A bundle may carry several faithful variants of one model (TFLite fp32/fp16/int8, the ONNX
model; docs/store-and-bundles.md). The device tries each one it can load on its own hardware
(:mod:`edge_runtime.inference.variant_trial`: golden self-test first, then a short timed run)
and :func:`choose_variant` decides from those figures alone:

* a variant whose self-test failed, or that could not load, never serves;
* one whose error against the reference (the converter's measurement, or the device's own
  self-test error) is above the bundle's accuracy budget never serves;
* an operator's pin (``[models.NAME] variant``) wins when the pinned variant passed; a pin
  that names a failed or unknown variant is reported, and the device chooses as if unpinned
  (serving a variant that failed its self-test is never an option);
* otherwise the fastest by ms per row; a variant listed earlier in the bundle (the
  converter's preference) is kept over a faster one while it is within ``tie_pct`` per cent
  of it, so that timing noise does not flip the choice between two equal variants.

No I/O: figures in, :class:`Choice` out, so every rule is a table test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edge_runtime.exceptions import InferenceError

MAX_REASON_CHARS = 300


class Outcome(StrEnum):
    """Why a variant was or was not chosen."""

    CHOSEN = "chosen"
    SLOWER = "slower"
    FAILED = "failed"  # self-test failed or the variant could not load or run
    OVER_BUDGET = "over-budget"
    NOT_PINNED = "not-pinned"


@dataclass(frozen=True)
class Trial:
    """What the device measured of one variant.

    ``error`` is why it cannot serve (None when it loaded and passed its self-test);
    ``ms_per_row`` its timed run; ``max_abs_error`` the larger of the converter's recorded
    error against the reference and the device's self-test error, when known.
    """

    variant: str
    ms_per_row: float | None = None
    error: str | None = None
    max_abs_error: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The record's form."""
        return {"variant": self.variant, "ms_per_row": self.ms_per_row, "error": self.error,
                "max_abs_error": self.max_abs_error}

    @classmethod
    def from_json(cls, obj: Any) -> Trial:
        """Read a recorded trial; ValueError when it is malformed."""
        if not isinstance(obj, dict) or not isinstance(obj.get("variant"), str):
            raise ValueError("a trial needs a variant name")
        ms, err, mae = obj.get("ms_per_row"), obj.get("error"), obj.get("max_abs_error")
        for value in (ms, mae):
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                      or not math.isfinite(value) or value < 0):
                raise ValueError("ms_per_row and max_abs_error must be finite numbers >= 0")
        if err is not None and not isinstance(err, str):
            raise ValueError("error must be text")
        return cls(obj["variant"][:64], None if ms is None else float(ms), None if err is None else err[:MAX_REASON_CHARS],
                   None if mae is None else float(mae))


@dataclass(frozen=True)
class Verdict:
    """One variant's figure and outcome, with the reason in words."""

    variant: str
    ms_per_row: float | None
    outcome: Outcome
    reason: str

    def to_json(self) -> dict[str, Any]:
        """The form shown in metadata, ``models list`` and the fleet state."""
        return {"variant": self.variant, "ms_per_row": None if self.ms_per_row is None else round(self.ms_per_row, 6),
                "outcome": self.outcome.value, "reason": self.reason[:MAX_REASON_CHARS]}


@dataclass(frozen=True)
class Choice:
    """The variant served, whether a pin chose it, and every variant's verdict (bundle order)."""

    chosen: str
    pinned: bool
    verdicts: tuple[Verdict, ...]

    @property
    def chosen_ms_per_row(self) -> float | None:
        """The chosen variant's timed figure."""
        return next(v.ms_per_row for v in self.verdicts if v.variant == self.chosen)

    def to_json(self) -> dict[str, Any]:
        """``{"variant", "pinned", "variants": [verdicts]}``."""
        return {"variant": self.chosen, "pinned": self.pinned, "variants": [v.to_json() for v in self.verdicts]}


def _ms(value: float | None) -> str:
    return "not timed" if value is None else f"{value:.4g} ms/row"


def choose_variant(trials: Sequence[Trial], budget_max_abs_error: float | None = None, pin: str = "",
                   tie_pct: float = 5.0) -> Choice:
    """Choose among ``trials`` (in bundle order); InferenceError when no variant can serve."""
    if not trials:
        raise InferenceError("no variants to choose from")
    failed: dict[str, str] = {}
    for t in trials:
        if t.error is not None:
            failed[t.variant] = t.error
        elif t.ms_per_row is None:
            failed[t.variant] = "it was not timed"
        elif budget_max_abs_error is not None and t.max_abs_error is not None and t.max_abs_error > budget_max_abs_error:
            failed[t.variant] = ""  # over budget, worded below
    usable = [t for t in trials if t.variant not in failed]
    if not usable:
        why = "; ".join(f"{t.variant}: {failed[t.variant] or 'over the accuracy budget'}" for t in trials)
        raise InferenceError(f"no variant can serve: {why}")
    pin_note = ""
    chosen: Trial | None = None
    if pin:
        chosen = next((t for t in usable if t.variant == pin), None)
        if chosen is None:
            known = [t.variant for t in trials]
            pin_note = (f"the pinned variant {pin!r} " + (f"cannot serve ({failed[pin] or 'over the accuracy budget'})"
                        if pin in failed else f"is not in the bundle ({', '.join(known)})") + "; ")
    fastest = min(usable, key=lambda t: t.ms_per_row or 0.0)
    if chosen is None:
        limit = (fastest.ms_per_row or 0.0) * (1.0 + tie_pct / 100.0)
        chosen = next(t for t in usable if (t.ms_per_row or 0.0) <= limit)  # bundle order breaks near-ties
    pinned = bool(pin) and chosen.variant == pin
    verdicts = []
    for t in trials:
        if t is chosen:
            if pinned:
                reason = "pinned by the operator"
            elif t is fastest:
                reason = pin_note + "the fastest that passed its self-test"
            else:
                reason = pin_note + f"within {tie_pct:g}% of the fastest ({fastest.variant}, {_ms(fastest.ms_per_row)}), listed first"
            verdicts.append(Verdict(t.variant, t.ms_per_row, Outcome.CHOSEN, reason))
        elif t.variant in failed and failed[t.variant]:
            verdicts.append(Verdict(t.variant, t.ms_per_row, Outcome.FAILED, failed[t.variant]))
        elif t.variant in failed:
            verdicts.append(Verdict(t.variant, t.ms_per_row, Outcome.OVER_BUDGET,
                                    f"error {t.max_abs_error:.3g} against the reference is above the budget "
                                    f"{budget_max_abs_error:.3g}"))
        elif pinned:
            verdicts.append(Verdict(t.variant, t.ms_per_row, Outcome.NOT_PINNED, f"the operator pinned {pin}"))
        else:
            verdicts.append(Verdict(t.variant, t.ms_per_row, Outcome.SLOWER,
                                    f"{_ms(t.ms_per_row)} against {_ms(chosen.ms_per_row)} for {chosen.variant}"))
    return Choice(chosen.variant, pinned, tuple(verdicts))


__all__ = ["Choice", "Outcome", "Trial", "Verdict", "choose_variant"]

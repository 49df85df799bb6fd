"""Where a release stands across the fleet, and when a staged rollout must stop. Pure code.

The operator knows a device only from its retained ``state`` document. For one release
(``name`` v``version`` offered to ``percent`` % with ``salt``) each device is exactly one of:

* ``failed``: the version is in the device's ``failed`` list (its self-test or activation
  failed and the device rolled back; it never retries that version);
* ``updated``: the version is active and no job for it is still running;
* ``rejected``: the device refused the release (its last error names this version and it is
  idle without it: incompatible CPU or runtime, too big, below the rollback floor), or it
  refused the desired state itself: its state's ``desired`` says ``rejected`` with the sha256
  of a desired-state message this rollout published (untrusted key, bad signature, replayed
  seq). Such a device never learns its bucket, so it counts wherever its bucket is;
* ``pending``: in the rollout (its bucket is below ``percent``) and none of the above yet;
* ``outside``: not in the rollout and not touched by this release.

The failure share of a step is ``(failed + rejected) / (updated + failed + rejected)``: the
share of the devices that finished trying the release which did not end up running it, the
way AWS IoT Jobs counts FAILED and REJECTED executions against its abort threshold and
hawkBit its error threshold. Devices still pending do not count either way while a step
waits; a step *passes* only when none of its devices is still pending and the failure share
is within the limit (:func:`step_passes`): a step wait that runs out with devices pending
does not pass.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_runtime.exceptions import UsageError
from edge_runtime.updates.verify import rollout_bucket

OUTCOMES = ("updated", "failed", "rejected", "drifting", "pending", "outside")


@dataclass(frozen=True)
class Tally:
    """Counts of one release across the devices that reported a state."""

    name: str
    version: int
    percent: int
    devices: int
    in_rollout: int
    updated: int
    failed: int
    rejected: int
    pending: int
    drifting: int = 0  # updated, but the release's drift score reached --max-drift (counts as a failure)

    @property
    def finished(self) -> int:
        """Devices that tried the release and are done with it, for better or worse."""
        return self.updated + self.failed + self.rejected + self.drifting

    @property
    def bad(self) -> int:
        """Devices that count against the release: failed, rejected or drifting."""
        return self.failed + self.rejected + self.drifting

    @property
    def failure_percent(self) -> float:
        """Failed, rejected and drifting devices as a percentage of the finished ones (0 when none finished)."""
        return 100.0 * self.bad / self.finished if self.finished else 0.0

    def describe(self) -> str:
        """One line for a terminal."""
        return (
            f"{self.name} v{self.version} at {self.percent}%: {self.updated} updated, {self.failed} failed, "
            f"{self.rejected} rejected, " + (f"{self.drifting} drifting, " if self.drifting else "")
            + f"{self.pending} pending of {self.in_rollout} devices in the rollout "
            f"({self.devices} reporting); failure share {self.failure_percent:.1f}%"
        )


def _model_entry(state: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    models = (state or {}).get("models")
    entry = models.get(name) if isinstance(models, Mapping) else None
    return entry if isinstance(entry, Mapping) else {}


def _drifting(entry: Mapping[str, Any], version: int, max_drift: float | None) -> bool:
    drift = entry.get("drift")
    if max_drift is None or not isinstance(drift, Mapping) or drift.get("version") != version:
        return False
    score = drift.get("score")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and score >= max_drift


def rejected_desired(state: Mapping[str, Any] | None, published: Collection[str]) -> bool:
    """The device reports that it refused one of the ``published`` desired-state messages (by sha256)."""
    desired = (state or {}).get("desired")
    if not isinstance(desired, Mapping) or desired.get("status") != "rejected":
        return False
    sha = desired.get("sha256")
    return isinstance(sha, str) and sha in published


def outcome(device: str, state: Mapping[str, Any] | None, name: str, version: int, percent: int, salt: str,
            max_drift: float | None = None, published: Collection[str] = ()) -> str:
    """Which of :data:`OUTCOMES` a device is in for ``name`` v``version`` (``drifting``: updated, and
    the version's drift score reached ``max_drift``). ``published``: the sha256 of each desired-state
    message the rollout published, to recognise a device that refused one."""
    entry = _model_entry(state, name)
    failed = entry.get("failed")
    if isinstance(failed, Mapping) and str(version) in failed:
        return "failed"
    update = (state or {}).get("update")
    busy_with_it = isinstance(update, Mapping) and update.get("model") == name and update.get("version") == version
    if entry.get("active") == version and not busy_with_it:
        return "drifting" if _drifting(entry, version, max_drift) else "updated"
    error = (state or {}).get("last_error")
    if (
        isinstance(error, Mapping)
        and error.get("model") == name
        and error.get("version") == version
        and not busy_with_it
        and entry.get("active") != version
    ):
        return "rejected"
    if rejected_desired(state, published):
        return "rejected"
    if rollout_bucket(device, salt) < percent:
        return "pending"
    return "outside"


def tally(devices: Iterable[Mapping[str, Any]], name: str, version: int, percent: int, salt: str,
          max_drift: float | None = None, published: Collection[str] = ()) -> Tally:
    """Count every device (rows as :func:`~edge_runtime.fleet.status.collect_status` returns them)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    in_rollout = total = 0
    for row in devices:
        state = row.get("state")
        if not isinstance(state, Mapping):
            continue  # an online flag without a state: the device never said what it runs
        total += 1
        device = str(row["device"])
        counts[outcome(device, state, name, version, percent, salt, max_drift, published)] += 1
        in_rollout += rollout_bucket(device, salt) < percent
    return Tally(
        name, version, percent, total, in_rollout, counts["updated"], counts["failed"], counts["rejected"], counts["pending"],
        counts["drifting"],
    )


def over_limit(t: Tally, max_failures_percent: float) -> bool:
    """The failure share of the finished devices passes the limit (strictly above it)."""
    return t.finished > 0 and t.failure_percent > max_failures_percent


def surely_over_limit(t: Tally, max_failures_percent: float) -> bool:
    """Over the limit even if every pending device succeeds: no need to wait for them."""
    bad = t.bad
    return bad > 0 and 100.0 * bad > max_failures_percent * (t.finished + t.pending)


def step_passes(t: Tally, max_failures_percent: float | None) -> bool:
    """A step passes when every device of it has finished (none pending) and, with a limit, the
    failure share is within it: devices that never answered are not a success."""
    if t.pending > 0:
        return False
    return max_failures_percent is None or not over_limit(t, max_failures_percent)


def parse_steps(text: str) -> list[int]:
    """``"10,50,100"`` -> ``[10, 50, 100]``: strictly increasing percentages in 1..100."""
    steps: list[int] = []
    for part in text.split(","):
        part = part.strip().rstrip("%")
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"--steps: expected comma-separated percentages like 10,50,100, found {text!r}") from None
        if not 1 <= value <= 100:
            raise UsageError(f"--steps: expected percentages in 1..100, found {value}")
        if steps and value <= steps[-1]:
            raise UsageError(f"--steps: expected increasing percentages, found {value} after {steps[-1]}")
        steps.append(value)
    return steps


__all__ = [
    "OUTCOMES", "Tally", "outcome", "over_limit", "parse_steps", "rejected_desired", "step_passes", "surely_over_limit",
    "tally",
]

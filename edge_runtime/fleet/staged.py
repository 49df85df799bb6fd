"""``fleet publish --steps 10,50,100 --step-wait S --bake B --max-failures P``: a rollout that halts itself.

The release is published once (chunks and manifest), then the fleet's desired state is
raised step by step. After each step the operator watches the devices' retained state
(:class:`~edge_runtime.fleet.status.DeviceStates`, live) and judges the step when

* every device in the step's rollout has finished (updated, failed or rejected), or
* the failure share is over the limit even if every pending device succeeds, or
* ``step_wait_s`` has passed.

``step_wait_s`` is the longest the operator waits for the step's devices to *finish*; a step
ends as soon as they have. The step passes only when none of its devices is still pending
and the failure share of the finished ones (:mod:`edge_runtime.fleet.rollout`) is within
``max_failures`` percent (:func:`~edge_runtime.fleet.rollout.step_passes`). A device that
refused the desired state itself reports so and counts as rejected, not pending.

``bake_s`` is a hold *after* a step passed: the release runs on the step's devices for that
long while the operator keeps watching; a failure (or, with ``max_drift``, drift) that takes
the failure share over the limit during the bake halts the rollout (without a limit, any new
failure does). Only then is the next step published.

A step that does not pass halts the rollout: the desired state stays at the step's
percentage (nothing more is published), and the result says so and what was reached (the
last step that passed). A halted rollout is resumed by publishing again (the same release
with a higher ``--rollout`` or ``--steps``) or replaced by a fixed release with a higher
version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.exceptions import UsageError
from edge_runtime.fleet.publish import PublishResult, publish_release
from edge_runtime.fleet.rollout import Tally, over_limit, step_passes, surely_over_limit, tally
from edge_runtime.fleet.session import FleetSession, ProgressFn
from edge_runtime.fleet.status import DeviceStates
from edge_runtime.spec.window import Window
from edge_runtime.trust.keys import PrivateKey
from edge_runtime.trust.root import TrustRoot
from edge_runtime.updates.protocol import rollout_salt

POLL_S = 0.2


@dataclass(frozen=True)
class StepResult:
    """One step: what was published and where the release stood when the step was judged."""

    percent: int
    published: PublishResult
    tally: Tally
    waited_s: float
    why: str  # "finished", "over the limit", "step wait over", "failed during the bake" (", baked" once baked)
    halted: bool
    baked_s: float = 0.0


@dataclass(frozen=True)
class StepVerdict:
    """How a watched step ended (:func:`watch_step`)."""

    tally: Tally
    why: str
    passed: bool
    waited_s: float
    baked_s: float = 0.0


@dataclass
class StagedResult:
    """Every step taken; ``halted_at`` is the percentage the rollout was left at when it halted."""

    name: str
    version: int
    max_failures: float | None
    steps: list[StepResult] = field(default_factory=list)
    halted_at: int | None = None

    @property
    def final_percent(self) -> int:
        """The percentage the fleet's desired state is left at."""
        return self.steps[-1].percent if self.steps else 0

    @property
    def reached(self) -> int:
        """The percentage of the last step that passed (0 when none did)."""
        passed = [s.percent for s in self.steps if not s.halted]
        return passed[-1] if passed else 0


def _judge(t: Tally, max_failures: float | None, deadline: float, now: float, watch_drift: bool = False) -> str | None:
    if max_failures is not None and surely_over_limit(t, max_failures):
        return "over the limit"
    if t.pending == 0 and not watch_drift:  # drift needs traffic: a watched step runs its whole wait
        return "finished"
    if now >= deadline:
        return "step wait over"
    return None


def watch_step(
    read: Callable[[], Tally],
    *,
    step_wait_s: float,
    bake_s: float = 0.0,
    max_failures: float | None = None,
    watch_drift: bool = False,
    on_bake: Callable[[Tally], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StepVerdict:
    """Watch one step: wait (at most ``step_wait_s``) for its devices to finish, judge it, and if
    it passed hold ``bake_s`` more while watching for failures. ``read`` returns the current tally."""
    started = clock()
    deadline = started + step_wait_s
    while True:
        t = read()
        # Drift needs traffic: without a bake, a drift-watched step runs its whole wait.
        why = _judge(t, max_failures, deadline, clock(), watch_drift and bake_s <= 0)
        if why is not None:
            break
        sleep(POLL_S)
    waited = clock() - started
    if why == "over the limit" or not step_passes(t, max_failures):
        return StepVerdict(t, why, False, waited)
    if bake_s <= 0:
        return StepVerdict(t, why, True, waited)
    if on_bake is not None:
        on_bake(t)
    bake_start = clock()
    bake_end = bake_start + bake_s
    bad_before = t.bad
    while True:
        now = clock()
        t = read()
        failing = over_limit(t, max_failures) if max_failures is not None else t.bad > bad_before
        if failing:
            return StepVerdict(t, "failed during the bake", False, waited, now - bake_start)
        if now >= bake_end:
            return StepVerdict(t, f"{why}, baked", True, waited, now - bake_start)
        sleep(min(POLL_S, bake_end - now))


def staged_rollout(
    session: FleetSession,
    bundle_path: Path,
    keys: Sequence[PrivateKey],
    steps: Sequence[int],
    *,
    step_wait_s: float,
    bake_s: float = 0.0,
    max_failures: float | None = None,
    max_drift: float | None = None,
    root: TrustRoot | None = None,
    expires_in_s: float | None = None,
    force_chunks: bool = False,
    progress: ProgressFn | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    on_bake: Callable[[int, Tally], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    delta_from: Sequence[Path] = (),
    window: Window | None = None,
) -> StagedResult:
    """Publish ``bundle_path`` to the fleet in ``steps`` (percentages), halting on failures."""
    if not steps or list(steps) != sorted(set(steps)) or not all(1 <= s <= 100 for s in steps):
        raise UsageError(f"steps must be increasing percentages in 1..100, found {list(steps)}")
    if step_wait_s < 0:
        raise UsageError(f"--step-wait must be >= 0 seconds, found {step_wait_s:g}")
    if bake_s < 0:
        raise UsageError(f"--bake must be >= 0 seconds, found {bake_s:g}")
    if max_failures is not None and not 0 <= max_failures <= 100:
        raise UsageError(f"--max-failures must be a percentage in [0, 100], found {max_failures:g}")
    with open_bundle(Path(bundle_path), root) as bundle:
        name, version = bundle.manifest.name, bundle.manifest.version
    salt = rollout_salt(name, version)
    states = DeviceStates(session.topics)
    session.watch([session.topics.devices_filter("state"), session.topics.devices_filter("online")], states.on_message)
    result = StagedResult(name, version, max_failures)
    published_shas: list[str] = []
    for i, percent in enumerate(steps):
        published = publish_release(
            session,
            bundle_path,
            keys,
            percent=percent,
            root=root,
            expires_in_s=expires_in_s,
            force_chunks=force_chunks and i == 0,
            progress=progress if i == 0 else None,
            delta_from=delta_from,  # made once: later steps find the retained delta index
            window=window,
        )
        published_shas.append(published.desired_sha256)

        def read(percent: int = percent) -> Tally:
            return tally(states.devices(), name, version, percent, salt, max_drift, published_shas)

        def baking(t: Tally, percent: int = percent) -> None:
            if on_bake is not None:
                on_bake(percent, t)

        verdict = watch_step(
            read,
            step_wait_s=step_wait_s,
            bake_s=bake_s,
            max_failures=max_failures,
            watch_drift=max_drift is not None,
            on_bake=baking,
            clock=clock,
            sleep=sleep,
        )
        halted = not verdict.passed
        step = StepResult(percent, published, verdict.tally, verdict.waited_s, verdict.why, halted, verdict.baked_s)
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
        if halted:
            result.halted_at = percent
            break
    return result


__all__ = ["StagedResult", "StepResult", "StepVerdict", "staged_rollout", "watch_step"]

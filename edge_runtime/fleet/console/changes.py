"""What changed between two digests of a device's state, in one line for its timeline. Pure code."""

from __future__ import annotations

from edge_runtime.fleet.console.digest import StateDigest, cut


def describe_change(prev: StateDigest | None, new: StateDigest) -> str:
    """What changed from ``prev`` to ``new``, in one line for the timeline."""
    if new.problem:
        return f"malformed state: {new.problem}"
    parts: list[str] = []
    before = {m.name: m for m in (prev.models if prev and not prev.problem else ())}
    for m in new.models:
        old = before.get(m.name)
        if m.error:
            if old is None or old.error != m.error:
                parts.append(f"{m.name}: unreadable on the device ({m.error})")
            continue
        running = "factory" if m.active is None else f"v{m.active}"
        if old is None or old.active != m.active or old.error:
            parts.append(f"{m.name} {running}" if old is None else f"{m.name} {'factory' if old.active is None else f'v{old.active}'} → {running}")
        for v, reason in m.failed.items():
            if old is None or v not in old.failed:
                parts.append(f"{m.name} v{v} failed: {reason}")
        if m.drift is not None and (old is None or old.drift is None or old.drift.score != m.drift.score or old.drift.alert != m.drift.alert):
            parts.append(f"{m.name} drift {m.drift.score:.3g}" + (" ALERT" if m.drift.alert else ""))
    old_update = prev.update if prev else ""
    if new.update != old_update:
        parts.append(f"update {new.update}" if new.update else "no update in progress")
    if new.last_error != (prev.last_error if prev else "") and new.last_error:
        where = f"{new.error_model} v{new.error_version}: " if new.error_model else ""
        where = "" if new.last_error.startswith(where) else where  # self-test reasons already name the version
        parts.append(f"last error {where}{new.last_error}")
    if prev is not None and prev.problem:
        parts.insert(0, "well-formed again")
    if new.desired_seq != (prev.desired_seq if prev else None) and new.desired_seq is not None:
        parts.append(f"took desired seq {new.desired_seq}")
    old_health = set(prev.health.alerts) if prev and prev.health else set()
    new_health = set(new.health.alerts) if new.health else set()
    parts += [a.upper() for a in sorted(new_health - old_health)]
    parts += [f"no longer {a}" for a in sorted(old_health - new_health)]
    old_desired = prev.desired if prev else None
    if new.desired is not None and new.desired.rejected and new.desired != old_desired:
        parts.append(new.desired.describe())
    elif old_desired is not None and old_desired.rejected and not (new.desired and new.desired.rejected):
        parts.append(new.desired.describe() if new.desired else "no longer reports a rejected desired state")
    return cut("; ".join(parts) or "state republished", 1000)


__all__ = ["describe_change"]

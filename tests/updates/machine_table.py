"""Helpers of the update machine's table tests: an effect as a short phrase, and a runner that
checks each (event, view change) step's effects against the phrases a table lists."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from pathlib import Path
from typing import Any

from edge_runtime.updates.effects import (
    Activate,
    Announce,
    ClearChunkFilters,
    DownloadFacts,
    DropDownload,
    Effect,
    Event,
    Install,
    Now,
    OpenDownload,
    PublishState,
    RecordFailure,
    Report,
    RequestChunks,
    SaveRoot,
    SaveState,
    SaveTraffic,
    StaticFacts,
    Subscribe,
    Unsubscribe,
    UpdaterSettings,
    VerifyDownload,
    View,
)
from edge_runtime.updates.machine import UpdateMachine
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelView
from updates.conftest import DEVICE, FleetKeys

T0 = _dt.datetime(2026, 3, 2, 12, 0, tzinfo=_dt.UTC)
ACTIVE_1 = ModelView(active=1, highest_seen=1, installed=frozenset({1}), failed=frozenset(), quarantined=frozenset())
ACTIVE_2 = StaticFacts(models={"fraud": ModelView(2, 2, frozenset({1, 2}), frozenset(), frozenset())})
FILTERS = ("edge/f1/models/fraud/2/chunks/model.tflite/+",)


def dl(percent: int, *, complete: bool = False, filters: tuple[str, ...] = FILTERS, **kw: Any) -> DownloadFacts:
    """The open download as the driver would describe it."""
    return DownloadFacts(base=0, filters=filters, complete=complete, percent=percent, have_bytes=percent,
                         total_bytes=100, received_bytes=percent, rejected_bytes=0, **kw)


def phrase(effect: Effect, topics: Topics) -> str:
    """One effect as a short phrase (topics without the fleet prefix)."""
    def short(filters: tuple[str, ...]) -> str:
        return " ".join(f.removeprefix(topics.base + "/") for f in filters)

    match effect:
        case Subscribe(filters=f):
            return f"subscribe {short(f)}"
        case Unsubscribe(filters=f):
            return f"unsubscribe {short(f)}"
        case Announce():
            return "announce"
        case Report(kind=kind, name=None):
            return f"report {kind}"
        case Report(kind=kind, name=name, version=version):
            return f"report {kind} {name} v{version}"
        case PublishState():
            return "publish"
        case SaveState():
            return "save"
        case SaveRoot(root=root):
            return f"save root v{root.version}"
        case SaveTraffic():
            return "save traffic"
        case OpenDownload(release=release):
            return f"open {release.manifest.name} v{release.manifest.version}"
        case RequestChunks(unsubscribe=again):
            return "request chunks again" if again else "request chunks"
        case ClearChunkFilters():
            return "clear filters"
        case DropDownload(remove=remove):
            return "remove download" if remove else "close download"
        case VerifyDownload():
            return "verify"
        case Install():
            return "install"
        case Activate(name=name, version=version):
            return f"activate {name} v{version}"
        case RecordFailure(name=name, version=version):
            return f"record failure {name} v{version}"
    raise AssertionError(effect)


Step = tuple[Event, dict[str, Any], list[str]]  # event, View fields (and "t": seconds later), phrases


@dataclasses.dataclass
class Table:
    """Runs steps against one machine and checks each step's effects."""

    machine: UpdateMachine
    view: View
    topics: Topics

    def run(self, steps: list[Step]) -> list[Effect]:
        """Every step's effects must read as its phrases; returns all the effects, in order."""
        effects: list[Effect] = []
        for n, (event, change, want) in enumerate(steps):
            change = dict(change)
            t = change.pop("t", 0.0)
            view = dataclasses.replace(self.view, **change)
            now = Now(1000.0 + t, T0 + _dt.timedelta(seconds=t), "2026-03-02T12:00:00Z")
            out = self.machine.handle(event, view, now)
            effects.extend(out)
            got = [phrase(e, self.topics) for e in out]
            assert got == want, f"step {n}: {type(event).__name__}"
        return effects


def make_table(topics: Topics, keys: FleetKeys, tmp_path: Path, facts: StaticFacts | None = None, **settings: Any) -> Table:
    s = UpdaterSettings(DEVICE, topics, tmp_path, tmp_path / "staging", machine="x86_64", stall_s=5.0,
                        activation_timeout_s=30.0, **settings)
    view = View(keys.root, facts or StaticFacts(models={"fraud": ACTIVE_1}))
    return Table(UpdateMachine(s, max_bundle_bytes=10**9), view, topics)




def reasons(effects: list[Effect]) -> list[str]:
    """The reasons of every ``rejected`` report among ``effects``."""
    return [str(e.fields.get("reason", "")) for e in effects if isinstance(e, Report) and e.kind == "rejected"]

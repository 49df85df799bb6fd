"""The attacks of ``test_attacks.py`` as tables for the update machine alone: the message an
attacker controls -> the effects, which must be a refusal that names the attack and nothing
that fetches, installs or activates. (``test_attacks.py`` keeps driving the real store through
the in-memory broker; the chunk-level attacks are checks of ``download.py`` and stay there.)"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_runtime.bundle.reader import open_bundle
from edge_runtime.trust.keys import generate_private_key
from edge_runtime.trust.root import make_root, sign_root
from edge_runtime.updates.effects import (
    Activate,
    DesiredReceived,
    Install,
    ManifestReceived,
    OpenDownload,
    Phase,
    RootReceived,
    SaveRoot,
    StaticFacts,
    Subscribe,
)
from edge_runtime.updates.protocol import Topics
from edge_runtime.updates.verify import ModelView
from updates.conftest import FleetKeys, Releases, Repo
from updates.machine_table import Step, make_table, reasons

REJECTED = ["save", "report rejected", "publish"]  # a refusal not tied to a model
NOTIFIED = ["save", "publish", "report notified fraud v2", "subscribe models/fraud/2/manifest", "publish"]
REFUSED = ["save", "report rejected fraud v2", "publish"]  # a bad manifest: the job keeps waiting
ENDED = [*REFUSED, "publish"]  # a valid release this device must never take: the job ends


@dataclass(frozen=True)
class Ctx:
    repo: Repo
    releases: Releases
    keys: FleetKeys

    def manifest(self, bundle: Path, **kw: object) -> bytes:
        return self.repo.manifest(bundle, **kw)[1]  # type: ignore[arg-type]

    def desired_v2(self) -> Step:
        return (DesiredReceived(self.repo.desired({"fraud": 2}, seq=1)), {}, NOTIFIED)


@dataclass(frozen=True)
class Attack:
    """Steps (the last one is the attack), the words its reason must hold, the job's phase after."""

    steps: Callable[[Ctx], list[Step]]
    says: str
    phase: Phase | None = None
    facts: Callable[[Ctx], StaticFacts] | None = None
    signed_desired: bool = False  # the attack is a model version inside a valid desired state: its floor is taken


def _other_arch() -> str:
    return "riscv64" if platform.machine() != "riscv64" else "x86_64"


def _v2_installed(ctx: Ctx) -> StaticFacts:
    with open_bundle(ctx.releases.bundle(2), None) as b:
        raw = b.manifest_bytes
    model = ModelView(1, 2, frozenset({1, 2}), frozenset(), frozenset())
    return StaticFacts(models={"fraud": model}, manifests={("fraud", 2): raw})


def _root(version: int, keys: FleetKeys, *, new_keys_only: bool) -> bytes:
    new = generate_private_key()
    signers = [new] if new_keys_only else [keys.root_key, new]
    return sign_root(make_root(version, [new], [new if new_keys_only else keys.models_key]), signers)


ATTACKS: dict[str, Attack] = {
    "unsigned desired state": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 2}, seq=1, signers=[])), {}, REJECTED)], "signature"),
    "desired state signed by a stranger": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 2}, seq=1, signers=[c.keys.stranger])), {}, REJECTED)],
        "signature"),
    "desired state signed for another fleet": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 2}, seq=1, fleet="f2")), {}, REJECTED)],
        "signed for fleet 'f2', this device is in fleet 'f1'"),
    "override signed for another device": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 2}, seq=1, device="dev-2"), device=True), {}, REJECTED)],
        "signed for device 'dev-2', expected 'dev-1'"),
    "replayed older desired state": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 1}, seq=5)), {}, ["save", "publish"]),
                   (DesiredReceived(c.repo.desired({"fraud": 2}, seq=3)), {}, REJECTED)],
        "seq 3 is older than the seq 5 already followed"),
    "same seq with other contents": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 1}, seq=5)), {}, ["save", "publish"]),
                   (DesiredReceived(c.repo.desired({"fraud": 2}, seq=5)), {}, REJECTED)],
        "seq 5 was already followed with different contents"),
    "expired desired state with a trusted clock": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 2}, seq=1, expires="2001-01-01T00:00:00Z")),
                    {"facts": StaticFacts(trusted_clock=True)}, REJECTED)],
        "expired at 2001-01-01"),
    "older model version": Attack(
        lambda c: [(DesiredReceived(c.repo.desired({"fraud": 1}, seq=1)), {},
                    ["save", "publish", "save", "report rejected fraud v1", "publish"])],
        "fraud v1 is older than the active v2", signed_desired=True,
        facts=lambda c: StaticFacts(models={"fraud": ModelView(2, 2, frozenset({1, 2}), frozenset(), frozenset())})),
    "manifest signed by an unknown key": Attack(
        lambda c: [c.desired_v2(), (ManifestReceived("fraud", 2, c.manifest(c.releases.bundle(2), signers=[c.keys.stranger])),
                                    {}, REFUSED)],
        "signature", Phase.MANIFEST),
    "manifest of another version under this topic": Attack(
        lambda c: [c.desired_v2(), (ManifestReceived("fraud", 2, c.manifest(c.releases.bundle(3))), {}, REFUSED)],
        "the signed manifest is for fraud v3, expected fraud v2", Phase.MANIFEST),
    "manifest of another model naming this one": Attack(
        lambda c: [c.desired_v2(), (ManifestReceived("fraud", 2, c.manifest(c.releases.bundle(2, name="other"))), {}, REFUSED)],
        "the signed manifest is for other v2, expected fraud v2", Phase.MANIFEST),
    "artifact for another CPU architecture": Attack(
        lambda c: [c.desired_v2(), (ManifestReceived("fraud", 2, c.manifest(c.releases.bundle(2, architectures=[_other_arch()]))),
                                    {}, ENDED)],
        f"built for architectures ['{_other_arch()}']"),
    "same version with different bytes": Attack(
        lambda c: [c.desired_v2(), (ManifestReceived("fraud", 2, c.manifest(c.releases.bundle(2, pad=100, tag="rebuilt"))),
                                    {}, ENDED)],
        "already installed with different bytes", facts=_v2_installed),
    "root update that skips a version": Attack(
        lambda c: [(RootReceived(3, _root(3, c.keys, new_keys_only=False)), {}, REJECTED)],
        "expected version 2, found 3 (a skipped version)"),
    "root update signed only by the new keys": Attack(
        lambda c: [(RootReceived(2, _root(2, c.keys, new_keys_only=True)), {}, REJECTED)], "by the keys of version 1"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack(name: str, repo: Repo, releases: Releases, fleet_keys: FleetKeys, tmp_path: Path) -> None:
    attack, ctx = ATTACKS[name], Ctx(repo, releases, fleet_keys)
    table = make_table(Topics("edge", "f1"), fleet_keys, tmp_path, attack.facts(ctx) if attack.facts else None)
    steps = attack.steps(ctx)
    effects = table.run(steps[:-1])
    floors = dict(table.machine.floors)
    effects += table.run(steps[-1:])
    said = reasons(effects)
    assert said and attack.says in said[-1], said
    assert not [e for e in effects if isinstance(e, OpenDownload | Install | Activate | SaveRoot)]
    assert not [e for e in effects if isinstance(e, Subscribe) and any("/chunks/" in f for f in e.filters)]
    if not attack.signed_desired:
        assert table.machine.floors == floors, "the attack moved a seq floor"
    job = table.machine.job
    assert (job.phase if job is not None else None) == attack.phase

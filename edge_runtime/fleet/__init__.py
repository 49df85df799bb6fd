"""The operator side of the update protocol: publish releases (also in watched, self-halting
steps), read device status, prune. :mod:`edge_runtime.fleet.simulate` (not imported here: it
loads the inference stack) runs simulated devices for tests and benchmarks."""

from edge_runtime.fleet.prune import Pruned, prune_releases
from edge_runtime.fleet.publish import PublishResult, publish_release
from edge_runtime.fleet.rollout import Tally, over_limit, tally
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.staged import StagedResult, StepResult, staged_rollout
from edge_runtime.fleet.status import (
    DeviceStates,
    FleetView,
    collect_fleet,
    collect_status,
    format_table,
    summary_lines,
)

__all__ = [
    "BrokerOptions",
    "DeviceStates",
    "FleetSession",
    "FleetView",
    "Pruned",
    "PublishResult",
    "StagedResult",
    "StepResult",
    "Tally",
    "collect_fleet",
    "collect_status",
    "format_table",
    "over_limit",
    "prune_releases",
    "publish_release",
    "staged_rollout",
    "summary_lines",
    "tally",
]

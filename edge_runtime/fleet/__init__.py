"""The operator side of the update protocol: publish releases, read device status, prune."""

from edge_runtime.fleet.prune import Pruned, prune_releases
from edge_runtime.fleet.publish import PublishResult, publish_release
from edge_runtime.fleet.session import BrokerOptions, FleetSession
from edge_runtime.fleet.status import collect_status, format_table

__all__ = [
    "BrokerOptions",
    "FleetSession",
    "Pruned",
    "PublishResult",
    "collect_status",
    "format_table",
    "prune_releases",
    "publish_release",
]

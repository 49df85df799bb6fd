"""``edge-runtime fleet console``: a read-only web page of one fleet, and its history in SQLite.

``service`` (MQTT, the operator session of :mod:`edge_runtime.fleet.session`) feeds messages to
``record`` (SQLite, ``schema`` migrations), which keeps bounded digests (``digest``, pure) of
what devices send; ``server`` (stdlib HTTP) renders ``pages`` from the record's current view
(``overview``) and its history (``history``). docs/console.md describes it.
"""

from edge_runtime.fleet.console.record import Record
from edge_runtime.fleet.console.server import ConsoleServer
from edge_runtime.fleet.console.service import ConsoleWatcher

__all__ = ["ConsoleServer", "ConsoleWatcher", "Record"]

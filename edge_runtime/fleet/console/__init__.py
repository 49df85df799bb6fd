"""``edge-runtime fleet console``: a read-only web page of one fleet, and its history in SQLite.

``service`` (MQTT, the operator session of :mod:`edge_runtime.fleet.session`) feeds messages to
``record`` (SQLite, ``schema`` migrations), which keeps bounded digests (``digest``, pure) of
what devices send; ``server`` (stdlib HTTP) renders ``pages`` from the record's current view
(``overview``) and its history (``history``). docs/console.md describes it.

Nothing is imported here: the CLI imports what ``fleet console`` needs from the modules, so
the other fleet commands never load the web server.
"""

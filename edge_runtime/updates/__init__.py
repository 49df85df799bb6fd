"""Signed model updates over MQTT (SPEC section 5).

``protocol`` names topics and message shapes, ``verify`` holds every check as a pure
function, ``download`` assembles chunks with resume, ``mqtt`` is a thin paho layer,
``updater`` is the state machine, ``service`` runs it beside the daemon
(``service.start_updates``). See docs/updates.md.

Nothing is imported here, so ``updates.roots`` (used at every start-up to find rotated
trust roots) does not pull in paho-mqtt on a device that runs offline.
"""

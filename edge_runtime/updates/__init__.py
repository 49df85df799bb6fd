"""Signed model updates over MQTT (SPEC section 5).

``protocol`` names topics and message shapes, ``verify`` holds every check as a pure
function, ``machine`` (with ``transfer``) is the pure state machine over the events and
effects of ``effects``, ``updater`` is its driver (it runs the effects), ``download``
assembles chunks with resume, ``mqtt`` is a thin paho layer, ``service`` runs it all beside
the daemon (``service.start_updates``). See docs/updates.md.

Nothing is imported here, so ``updates.roots`` (used at every start-up to find rotated
trust roots) does not pull in paho-mqtt on a device that runs offline.
"""

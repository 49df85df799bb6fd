"""PURE spec types shared by every layer: tensor specs (``tensors``), delegate lists and the
manifest's runtime field (``delegates``), broker URLs (``broker_url``) and the MQTT topic-level
rules (``topics``). They import only the standard library, numpy and ``edge_runtime.exceptions``,
so the config, the manifest model, inference and updates all point down at one home per type.

Nothing is imported here, so importing one spec module loads only that module.
"""

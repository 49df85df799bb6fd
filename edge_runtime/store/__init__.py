"""The versioned device store with anti-rollback, quarantine and factory fallback."""

from edge_runtime.store.store import ModelState, ModelStore, Resolved

__all__ = ["ModelState", "ModelStore", "Resolved"]

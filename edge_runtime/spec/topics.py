"""PURE: the one rule for fleet ids, device ids and topic prefixes (SPEC section 5), shared by
the config check (``[mqtt]``), the update protocol and the fleet tools."""

from __future__ import annotations

import re

# \Z, not $: "$" also matches before a trailing newline, so "pi-1\n" would pass.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}\Z")
PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]+(/[A-Za-z0-9_.:-]+)*\Z")

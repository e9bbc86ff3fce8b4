"""The one escaper: user text (checkpoint names, hyperparameters, metric names, paths) as literal text.

The same text goes into HTML (element content and attribute values) and into plotly's
pseudo-HTML (titles, ticks, hover labels). Plotly.js decodes numeric character references
and only a few named ones (``&amp;``, ``&lt;``, ``&gt;``, not ``&quot;``), so quotes are
written as numeric references, which both read back as the character.
"""

from __future__ import annotations

from typing import Any

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"}


def esc(value: Any) -> str:
    """``str(value)`` with ``& < > " '`` escaped: shown literally in HTML and in plotly labels."""
    return "".join(_ENTITIES.get(ch, ch) for ch in str(value))

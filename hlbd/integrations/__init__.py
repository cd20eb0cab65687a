"""Recording a framework's training into hlbd: ``hlbd.integrations.transformers``
(``HlbdCallback`` for ``transformers.Trainer``) and ``hlbd.integrations.lightning``
(``HlbdLogger`` for Lightning). Each is built on ``hlbd.Run`` and imports its framework
only when imported itself: ``import hlbd`` imports neither."""

import json


def json_safe(values: dict) -> dict:
    """``values`` as the run's config can hold them (JSON; anything else as its str):
    a framework's settings hold enums, paths and classes."""
    return json.loads(json.dumps(values, default=str))

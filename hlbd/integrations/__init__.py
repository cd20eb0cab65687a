"""Recording a framework's training into hlbd: ``hlbd.integrations.transformers``
(``HlbdCallback`` for ``transformers.Trainer``) and ``hlbd.integrations.lightning``
(``HlbdLogger`` for Lightning). Each is built on ``hlbd.Run`` and imports its framework
only when imported itself: ``import hlbd`` imports neither."""

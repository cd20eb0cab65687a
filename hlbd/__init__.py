"""hlbd: keep an honest record of training runs (and train small transformers on HLBD data).

``hlbd.init()`` starts recording a loop of your own and returns an ``hlbd.Run``
(hlbd.run); importing hlbd imports neither torch nor the store until they are used.
"""

__version__ = "0.1.0"
__all__ = ["Run", "init"]


def __getattr__(name: str):
    if name in ("init", "Run", "ResumedFrom"):
        from hlbd import run

        return getattr(run, name)
    raise AttributeError(f"module 'hlbd' has no attribute {name!r}")

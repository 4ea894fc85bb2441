"""EchoMimic for ComfyUI: the custom-node entry point (ComfyUI imports this file as a package).

The node mappings are resolved on first access (PEP 562), so importing this file does nothing: no
downloads, no folders, no output. That also keeps pytest's collection safe, which imports a root
``__init__.py`` (sometimes as a bare module with no package) before the tests.
The nodes live in ``nodes/`` and import the library relatively, so no install step is needed.
"""

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]


def __getattr__(name):
    if name in __all__:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

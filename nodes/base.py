"""What every EchoMimic node shares, declared once: ComfyUI's class attributes from a few declarations.

A node subclasses :class:`Node` and declares

- ``OUTPUTS``: one ``(type, name, tooltip)`` per output (ComfyUI's ``RETURN_TYPES``, ``RETURN_NAMES`` and
  ``OUTPUT_TOOLTIPS``, made here), and ``DESCRIPTION``;
- :meth:`Node.inputs`: the required inputs in widget order, :meth:`Node.optional_inputs` the optional ones (read
  at every ``INPUT_TYPES`` call, so the folder lists in them stay current);
- ``execute``: ComfyUI calls it with the inputs by name.

The input helpers below write the specs that several nodes use alike.
"""
from __future__ import annotations

import functools
import inspect
import logging
import math
import reprlib
import sys
from pathlib import Path

from ..echomimic_lib.errors import EchoMimicError
from . import names

log = logging.getLogger(__name__)

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
SOCKETS: dict[str, tuple[tuple[type, ...], str]] = {}  # the pack's socket types: their classes and the nodes giving them


def socket(kind: str, classes, source: str) -> None:
    """Declare what travels on one of the pack's sockets (``classes``) and which nodes give it (``source``), for
    :func:`link_problem`."""
    SOCKETS[kind] = (tuple(classes) if isinstance(classes, (tuple, list)) else (classes,), source)


def _brought(value) -> str | None:
    """What a link brings when it is plainly another socket's value (another pack socket, an IMAGE / MASK tensor, an
    AUDIO dict, a CONDITIONING list), else None."""
    for kind, (classes, source) in SOCKETS.items():
        if isinstance(value, classes):
            return f"{kind} (from {source})"
    shape = getattr(value, "shape", None)
    if shape is not None and type(value).__module__.startswith("torch"):
        return f"a tensor of shape {tuple(shape)} (an IMAGE or MASK)"
    if isinstance(value, dict):
        return "an AUDIO" if "waveform" in value else "a dict"
    if isinstance(value, (list, tuple)):
        return "a list (such as a CONDITIONING)"
    return None


def _module_tail(module: str) -> str:
    """A module's name inside the pack (``nodes.payloads``, ``echomimic_lib.frames.crop``), whatever the pack's folder
    is called (ComfyUI imports a custom-node folder under its folder name)."""
    parts = module.split(".")
    for anchor in ("nodes", "echomimic_lib"):
        if anchor in parts:
            return ".".join(parts[parts.index(anchor):])
    return module


def _twin(value, classes) -> type | None:
    """The class of ``classes`` that ``value``'s class is another copy of (the same class of the same module of another
    install of the pack), or None."""
    t = type(value)
    for cls in classes:
        if t is not cls and t.__qualname__ == cls.__qualname__ and _module_tail(t.__module__) == _module_tail(cls.__module__):
            return cls
    return None


def pack_folder(cls: type) -> str:
    """The folder of the pack copy a class was imported from (its top package's folder), for messages."""
    top = sys.modules.get(cls.__module__.split(".")[0])
    file = getattr(top, "__file__", None)
    try:
        return str(Path(file or inspect.getfile(cls)).parent)
    except (TypeError, OSError):
        return f"(the package {cls.__module__.split('.')[0]!r})"


def other_installs() -> list[str]:
    """The folders of the other copies of the pack imported in this process (two installs in custom_nodes), for the
    warning the pack logs when ComfyUI loads it."""
    here = sys.modules[__name__]
    found = set()
    for name, module in list(sys.modules.items()):
        node = getattr(module, "Node", None) if name.endswith(".nodes.base") and module is not here else None
        if isinstance(node, type) and node.__qualname__ == "Node" and node is not Node:
            found.add(pack_folder(node))
    return sorted(found - {pack_folder(Node)})


def two_copies_problem(name: str, value) -> str | None:
    """Why a linked value is another install's (two copies of the pack in custom_nodes, a git clone and a registry copy,
    say: ComfyUI keeps one copy's class for each node name, so a graph may run nodes of both, and one copy's classes are
    not the other's), or None. Any of the pack's sockets: the other copy's value may be another socket's too."""
    for kind, (classes, _) in SOCKETS.items():
        ours = _twin(value, classes)
        if ours is not None:
            break
    else:
        return None
    theirs, here = pack_folder(type(value)), pack_folder(ours)
    where = (f"{theirs} and {here}" if theirs != here else
             f"the folder {here}, imported twice as {type(value).__module__.split('.')[0]!r} and {ours.__module__.split('.')[0]!r}")
    return (f"{name}: the {kind} it is given was made by another copy of the pack: two copies of the EchoMimic pack are "
            f"installed ({where}), and ComfyUI ran nodes of both, whose values do not mix. Remove one of the two from "
            "custom_nodes (keep one install: the git clone or the registry copy) and restart ComfyUI.")


class Node:
    CATEGORY = "EchoMimic"
    FUNCTION = "execute"
    OUTPUTS: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS = (tuple(column) for column in zip(*cls.OUTPUTS))
        checks_links(cls)

    @classmethod
    def INPUT_TYPES(cls):
        spec = {"required": cls.inputs()}
        optional = cls.optional_inputs()
        if optional:
            spec["optional"] = optional
        return spec

    @classmethod
    def inputs(cls) -> dict:
        return {}

    @classmethod
    def optional_inputs(cls) -> dict:
        return {}


def _choice_key(value):
    """What a COMBO value is compared by when it is not a choice itself: text without its case or surrounding spaces, a
    whole number (an INT, or a FLOAT such as 24.0) as its digits; None for anything else (true/false, a list)."""
    if isinstance(value, str):
        return value.strip().casefold()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return str(int(value))


def combo_choice(name: str, value, choices: list):
    """The choice ``value`` stands for: itself when it is one, else the one choice it matches up to case, surrounding
    spaces or a number given for its digits (a workflow edited by hand, or saved by another version of the pack, whose
    widget was an INT). Raises :class:`EchoMimicError` naming the choices when it is none of them, or could be several."""
    if any(type(value) is type(c) and value == c for c in choices):
        return value
    key = _choice_key(value)
    found = [c for c in choices if key is not None and _choice_key(c) == key]
    if len(found) == 1:
        log.info("%s: %r taken as the choice %r", name, value, found[0])
        return found[0]
    if found:
        raise EchoMimicError(f"{name}: {value!r} could be any of {', '.join(map(repr, found))} (they differ only in case); "
                             "pick one of them in the node.")
    raise EchoMimicError(f"{name}: {value!r} is not one of its choices ({', '.join(map(str, choices))}); pick one of them "
                         "in the node (a workflow edited by hand, or saved by another version of the pack, may hold a value "
                         "the node does not have).")


def _own_names(node_cls) -> set:
    validate = getattr(node_cls, "VALIDATE_INPUTS", None)
    return set(inspect.signature(validate).parameters) if validate is not None else set()


def combo_values(node_cls, values: dict, spec: dict | None = None) -> dict:
    """``values`` with each COMBO input's value the choice it stands for (:func:`combo_choice`), or an
    :class:`EchoMimicError` naming the input and its choices. ComfyUI refuses a value not in the list when the prompt is
    queued; a node run without that check (the HTTP API with validation skipped, the stand-ins, a workflow edited by hand
    or saved by another version of the pack) ignored it or failed deep inside. An input the node's VALIDATE_INPUTS takes
    (the folder and file names, :mod:`.names`) is left to it, but for an empty name or null, which were taken as "none"
    (a LoRA node passed its model on without the LoRA): refused with the validation's message."""
    spec = node_cls.INPUT_TYPES() if spec is None else spec
    own, fixed = _own_names(node_cls), dict(values)
    for section in ("required", "optional"):
        for name, (choices, *_) in spec.get(section, {}).items():
            if not isinstance(choices, list) or name not in values:
                continue
            value = values[name]
            if value is None and section == "optional":
                continue  # not given
            if name in own:
                if value is None:
                    raise EchoMimicError(f"{name}: given nothing (null), no name from its list; pick one of "
                                         f"{', '.join(repr(c) for c in choices[:8])} in the node.")
                if isinstance(value, str) and names.is_empty(value):
                    said = node_cls.VALIDATE_INPUTS(**{name: value})
                    raise EchoMimicError(said if isinstance(said, str) else f"{name} is empty: pick one of its list.")
                continue
            fixed[name] = combo_choice(name, value, choices)
    return fixed


def number_problem(node_cls, values: dict, spec: dict | None = None) -> str | None:
    """Why a number input's value (INT / FLOAT) is no number, or None. A link through a switch / reroute node of type
    ``*`` may bring null, a list, text, a dict or a true/false, and ComfyUI type-checks no linked value. Most inputs are
    checked by their node, with their range in the words; where a node failed on one instead (a TypeError / ValueError /
    OverflowError from deep inside), :func:`checks_links` gives this message in its place."""
    spec = node_cls.INPUT_TYPES() if spec is None else spec
    for section in ("required", "optional"):
        for name, (typ, *_) in spec.get(section, {}).items():
            if typ not in ("INT", "FLOAT") or name not in values:
                continue
            value = values[name]
            if value is None and section == "optional":
                continue  # not given
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return (f"{name}: takes a number ({typ}), but it is given {_shown(value)}; set the widget, or link a node "
                        "that gives a number (a switch or reroute node may pass on another output).")
            if isinstance(value, int) and value.bit_length() > 1000:
                return (f"{name}: an integer of about {value.bit_length() * 3 // 10} digits is too large for a number input; "
                        "give a value in the widget's range.")
    return None


def widget_type_problem(node_cls, values: dict, spec: dict | None = None) -> str | None:
    """Why a text (STRING) or switch (BOOLEAN) input's value is not text / true-false, or None. A link through a switch
    or reroute node of type ``*`` (or an API prompt) may bring a number, a list or null, and ComfyUI type-checks no linked
    value: ``"false"`` on a switch was on (any non-empty text is true), a number as ``parts`` a TypeError, null as
    ``parts`` the default parts without a word. 0 / 1 on a switch are taken (a math or Primitive node's integer)."""
    spec = node_cls.INPUT_TYPES() if spec is None else spec
    for section in ("required", "optional"):
        for name, (typ, *_) in spec.get(section, {}).items():
            if typ not in ("STRING", "BOOLEAN") or name not in values:
                continue
            value = values[name]
            if value is None and section == "optional":
                continue  # not given
            if typ == "STRING" and not isinstance(value, str):
                return (f"{name}: takes text (STRING), but it is given {_shown(value)}; type it in the widget, or link a node "
                        "that gives text (a switch or reroute node may pass on another output).")
            if typ == "BOOLEAN" and not (isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")
                                         or (isinstance(value, int) and value in (0, 1))):
                return (f"{name}: takes true or false (BOOLEAN), but it is given {_shown(value)}; set the switch in the "
                        "widget, or link a node that gives true/false (text such as \"false\" is not read as off).")
    return None


def finite_problem(node_cls, values: dict, spec: dict | None = None) -> str | None:
    """Why a number input's value is NaN or infinite, or None. No widget gives one, but a link (a math node: 0/0, a
    value of 1e999 in an API prompt) does; where a node failed on one deep inside ("cannot convert float NaN to integer",
    an OverflowError), :func:`checks_links` gives this message in its place (a node's own check keeps its words)."""
    spec = node_cls.INPUT_TYPES() if spec is None else spec
    for section in ("required", "optional"):
        for name, (typ, *_) in spec.get(section, {}).items():
            value = values.get(name)
            if typ in ("INT", "FLOAT") and isinstance(value, float) and not math.isfinite(value):
                return (f"{name}: takes a finite number ({typ}), but it is given {value}; set the widget, or check the node "
                        "linked to it (a division by zero, or a value past any number).")
    return None


def _shown_repr():
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset, r.maxfrozenset, r.maxdeque = 3, 12, 12, 6, 12, 12, 12
    r.maxstring = r.maxother = r.maxlong = 80
    return r


_REPR = _shown_repr()


def _shown(value) -> str:
    if value is None:
        return "nothing (null)"
    try:  # (a container's first items only: a huge list's repr is never written whole to show 60 characters)
        text = _REPR.repr(value)
    except Exception:  # (another pack's object with a broken __repr__: the message still names the input)
        text = f"<{type(value).__name__} object>"
    return f"{text[:60] + '...' if len(text) > 60 else text} (a {type(value).__name__})"


def link_problem(node_cls, values: dict, spec: dict | None = None) -> str | None:
    """Why a value given for a linked input cannot be what the link brings, or None. ComfyUI checks neither the type nor
    the presence of a value given in an API prompt where a link belongs (``"model": "abc"``, ``"reference": null``): it
    would otherwise fail deep in the node (``'str' object has no attribute ...``)."""
    spec = node_cls.INPUT_TYPES() if spec is None else spec
    for section in ("required", "optional"):
        for name, (typ, _) in spec.get(section, {}).items():
            if isinstance(typ, list) or typ in WIDGET_TYPES or typ == "*" or name not in values:
                continue
            value = values[name]
            if value is None and section == "optional":
                continue  # not connected
            if value is None or isinstance(value, (str, bytes, bool, int, float)):
                given = "nothing (null)" if value is None else f"{value!r} (a {type(value).__name__})"
                return (f"{name}: takes a link from a node that gives {typ}, but the prompt gives {given}. In an "
                        "API-format prompt a link is [\"<node id>\", <output index>], e.g. [\"3\", 0]: connect the input "
                        "in the graph and export the prompt again (Export (API)).")
            if typ in SOCKETS and not isinstance(value, SOCKETS[typ][0]):  # through a switch / reroute node of type *,
                twin = two_copies_problem(name, value)  # or from another install of the pack
                if twin:
                    return twin
                got = _brought(value)  # which ComfyUI does not type-check: was an AttributeError deep in the node
                if got:
                    return (f"{name}: takes {typ} from {SOCKETS[typ][1]}, but the link brings {got}. Connect "
                            f"{SOCKETS[typ][1]} here (a switch or reroute node may pass on another output; the V1/V2 "
                            "and V3 models and their outputs do not mix).")
    return None


def checks_links(cls):
    """Class decorator (every :class:`Node` has it): the node's function first refuses, with :func:`link_problem`'s
    message, a plain value where a link belongs, with :func:`combo_values`' a COMBO value that is none of its
    choices (one differing only in case or spaces taken as its choice), and with :func:`widget_type_problem`'s a text or switch input given no text / true-false; a number input
    given no number that the node failed on is named by :func:`number_problem`."""
    run = cls.__dict__.get(cls.FUNCTION)
    if run is None or getattr(run, "_checks_links", False):
        return cls
    names = list(inspect.signature(run).parameters)[1:]

    @functools.wraps(run)
    def checked(self, *args, **kwargs):
        values, spec = {**dict(zip(names, args)), **kwargs}, type(self).INPUT_TYPES()
        problem = link_problem(type(self), values, spec)
        if problem:
            raise EchoMimicError(problem)
        values = combo_values(type(self), values, spec)  # each COMBO value its choice, or an error naming the choices
        problem = widget_type_problem(type(self), values, spec)
        if problem:
            raise EchoMimicError(problem)
        args, kwargs = tuple(values[n] for n in names[:len(args)]), {k: values[k] for k in kwargs}
        try:
            return run(self, *args, **kwargs)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:  # not the node's own EchoMimicError
            problem = number_problem(type(self), values, spec) or finite_problem(type(self), values, spec)
            if problem is None or isinstance(exc, EchoMimicError):
                raise
            raise EchoMimicError(problem) from exc

    checked._checks_links = True
    setattr(cls, cls.FUNCTION, checked)
    return cls


def link(kind: str, tooltip: str) -> tuple:
    """An input that takes another node's output (no widget)."""
    return (kind, {"tooltip": tooltip})


def switch(tooltip: str, default: bool = False) -> tuple:
    """An on/off widget."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def check_fps(fps, what: str = "fps") -> float:
    """The frame rate of a video's frames that came through a link (ComfyUI range-checks widgets only): 1 to
    :data:`~echomimic_lib.modes.MAX_SOURCE_FPS`, checked by :func:`echomimic_lib.modes.check_frame_rate` (one rule and
    one message for every node and flag), else an error naming the input, before any work."""
    from ..echomimic_lib.modes import MAX_SOURCE_FPS, check_frame_rate

    return check_frame_rate(fps, what, MAX_SOURCE_FPS)


def frame_rate(tooltip: str, default: float = 24.0, step: float = 0.01) -> tuple:
    """A frame-rate widget (1 to 120 frames per second)."""
    return ("FLOAT", {"default": default, "min": 1.0, "max": 120.0, "step": step, "tooltip": tooltip})

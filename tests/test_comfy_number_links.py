"""A number input (INT / FLOAT) given something that is no number: a link through a switch / reroute node of type *
brings null, a list, text, a dict, a true/false or an int past any float, and ComfyUI type-checks neither links nor
values there. Every node refuses it first, naming the input; before, the node failed deep inside (a TypeError /
ValueError / OverflowError traceback: trust audit 20 found Sampler cfg and Gestures expressiveness)."""
from __future__ import annotations

import pytest

from tests._pack import sub
from tests.test_comfy_user_5 import _arguments

EchoMimicError = sub("echomimic_lib.errors").EchoMimicError


def _number_cases():
    cases = []
    for key, cls in sub("nodes").NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (typ, *_) in spec.get(section, {}).items():
                if typ in ("INT", "FLOAT"):
                    cases.append((key, name, typ))
    return cases


def test_the_cases_cover_the_samplers_and_gestures():
    names = {(node, name) for node, name, _ in _number_cases()}
    assert ("EchoMimicSampler", "cfg") in names and ("EchoMimicGesturesFromAudio", "expressiveness") in names
    assert len(names) >= 40


@pytest.mark.parametrize("node,name,typ", _number_cases())
@pytest.mark.parametrize("value", [[1, 2], "7", {"a": 1}, 10**400], ids=["list", "text", "dict", "huge-int"])
def test_a_value_that_is_no_number_never_escapes_as_a_python_error(node, name, typ, value):
    """Each node's own check (with its range in the words), another clear error before it (weights missing on this
    machine), or :func:`nodes.base.number_problem`'s words where the node failed on the value, or the node runs when it
    never reads the input: never a TypeError / ValueError / OverflowError traceback."""
    cls = sub("nodes").NODE_CLASS_MAPPINGS[node]
    try:  # (a LoRA node with no LoRA picked never reads its strength: it runs)
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))
    except EchoMimicError:
        pass


@pytest.mark.parametrize("node,name", [("EchoMimicSampler", "cfg"), ("EchoMimicGesturesFromAudio", "expressiveness")])
@pytest.mark.parametrize("value", [None, [1, 2], "7", 10**400], ids=["null", "list", "text", "huge-int"])
def test_the_audits_cases_name_the_input(node, name, value):
    cls = sub("nodes").NODE_CLASS_MAPPINGS[node]
    with pytest.raises(EchoMimicError) as info:
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))
    msg = str(info.value)
    assert msg.startswith(f"{name}: ") and "number" in msg, msg


def test_plain_numbers_pass_the_check():
    check = sub("nodes.base").number_problem
    cls = sub("nodes").NODE_CLASS_MAPPINGS["EchoMimicSampler"]
    assert check(cls, {"cfg": 2.5, "steps": 30, "seed": 2**63}) is None
    assert check(cls, {"cfg": 3}) is None  # an INT link into a FLOAT: a number
    assert check(cls, {"cfg": None}).startswith("cfg: takes a number (FLOAT), but it is given nothing (null)")

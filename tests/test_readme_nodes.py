"""The README's node table lists every node the pack registers, with its id and display name (graph builders look
nodes up there)."""
from __future__ import annotations

from pathlib import Path

from tests._pack import load_pack

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_registered_node_is_in_the_readme_table():
    pack = load_pack()
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("| **EchoMimic")]
    missing = [node for node in pack.NODE_CLASS_MAPPINGS
               if not any(f"**{pack.NODE_DISPLAY_NAME_MAPPINGS[node]}** `{node}`" in row for row in rows)]
    assert not missing, f"README node table lacks (display name and id): {missing}"
    listed = {row.split("`")[1] for row in rows if "`" in row}
    assert listed <= set(pack.NODE_CLASS_MAPPINGS), f"README lists nodes the pack does not register: {listed - set(pack.NODE_CLASS_MAPPINGS)}"

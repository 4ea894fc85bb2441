"""Trust audit 19 (66ec656..5782765): each test failed before its fix."""
from __future__ import annotations

from types import SimpleNamespace


def test_a_batch_never_deletes_the_partial_file_of_a_render_that_holds_the_output(tmp_path):
    """`echomimic animate -o out/a.mp4` renders (its claim held, its `.a.<random>.partial.mp4` growing) while
    `echomimic batch -o out/` with a row `a` starts: the batch cleared "what a killed run left" before dispatching and
    again when its row was refused by that claim, deleting the live render's file (its hours lost at the rename)."""
    from echomimic_lib.jobs.batch.results import remove_partials
    from echomimic_lib.jobs.output_file import OutputClaim

    out = tmp_path / "a.mp4"
    live = tmp_path / ".a.x1y2z3.partial.mp4"
    live.write_bytes(b"frames of a render in flight")
    with OutputClaim(out):  # (another process's claim: flock refuses a second open file of this process too)
        assert remove_partials(SimpleNamespace(output=out)) == 0
        assert live.exists()
    assert remove_partials(SimpleNamespace(output=out)) == 1 and not live.exists()  # its render gone: a leftover


def test_doctor_names_a_safetensors_header_with_an_endless_offset_instead_of_crashing(tmp_path):
    """`echomimic doctor` read a .safetensors header whose data_offsets held 1e999 (JSON's infinity): int() raised
    OverflowError, which file_problem's except did not list, and doctor ended in a traceback."""
    import struct

    from echomimic_lib.jobs.doctor.models import file_problem

    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,1e999]}}'
    f = tmp_path / "unet.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    why = file_problem(f)
    assert why and "unreadable" in why

"""Trust audit 21 (3437d27..4225ec2): each test failed before its fix."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors.torch import save_file

from echomimic_lib.errors import EchoMimicError, WeightsError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks, file modes")


# ------------------------------------------------------------------ (a) a user's own `.<output>.lock` is never ours
@posix_only
@pytest.mark.parametrize("content", [b"my notes: do not delete\n", b'{"pid": 1, "note": "mine"}', b"\x00\x01binary"],
                         ids=["text", "other-json", "binary"])
def test_a_users_file_named_like_the_output_claim_is_never_overwritten_or_removed(tmp_path, content):
    """`animate -o out.mp4` claims `.out.mp4.lock` beside it: a user's own file of that name was truncated, overwritten
    with the claim's details and deleted at the end of the render. Now the claim is refused, naming the file and the fix,
    and the file is left as it was."""
    from echomimic_lib.jobs.output_file import OutputClaim

    mine = tmp_path / ".out.mp4.lock"
    mine.write_bytes(content)
    with pytest.raises(EchoMimicError, match="not a claim file") as err:
        OutputClaim(tmp_path / "out.mp4").acquire()
    assert str(mine) in str(err.value) and "rename" in str(err.value).lower()
    assert mine.read_bytes() == content


@posix_only
def test_a_users_file_named_like_the_batch_lock_is_never_overwritten(tmp_path):
    """The same for every lock of :class:`RunLock` (one batch per folder, one training run per output_dir)."""
    from echomimic_lib.jobs.batch.lock import LOCK_NAME, BatchLock

    mine = tmp_path / LOCK_NAME
    mine.write_text("keep me")
    with pytest.raises(EchoMimicError, match="not a claim file"):
        BatchLock(tmp_path).acquire()
    assert mine.read_text() == "keep me"


@posix_only
def test_the_claim_is_marked_as_ours_and_a_left_over_claim_is_still_taken_over(tmp_path):
    """A claim left by a killed run (this version's, with its mark, or an older version's details) is taken over as
    before, and removed at the end."""
    from echomimic_lib.jobs.output_file import OutputClaim

    claim = tmp_path / ".out.mp4.lock"
    with OutputClaim(tmp_path / "out.mp4"):
        written = claim.read_bytes()
        assert json.loads(written)["pid"] == os.getpid()
    assert not claim.exists()
    for left in (written, json.dumps({"pid": 2 ** 22 + 7, "host": "h", "pid_start": None, "started": "x",
                                      "command": "echomimic animate"}).encode(), b""):
        claim.write_bytes(left)
        with OutputClaim(tmp_path / "out.mp4"):
            assert json.loads(claim.read_bytes())["pid"] == os.getpid()
        assert not claim.exists()


@posix_only
def test_a_batch_clearing_partials_leaves_a_users_lock_named_file_alone(tmp_path):
    """The batch claims `.a.mp4.lock`, `.a.m4v.lock` and `.a.mov.lock` to clear a killed render's partial files: a
    user's `.a.mov.lock` was truncated and deleted."""
    from types import SimpleNamespace

    from echomimic_lib.jobs.batch.results import remove_partials

    mine = tmp_path / ".a.mov.lock"
    mine.write_text("user data")
    partial = tmp_path / ".a.x1y2z3.partial.mp4"
    partial.write_bytes(b"x")
    assert remove_partials(SimpleNamespace(output=tmp_path / "a.mp4")) == 0
    assert mine.read_text() == "user data" and partial.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.mov.lock", ".a.x1y2z3.partial.mp4"]


# ------------------------------------------------------------------ (b) an absurd LoRA alpha: refused at load time
def _v12_lora(path, alpha: float, tensor_alpha: float | None = None, rank: int = 2):
    from echomimic_lib.lora.files import LoraInfo

    info = LoraInfo(weights="v2", rank=rank, alpha=alpha)
    layer = "denoiser.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    tensors = {f"{layer}.lora_A.weight": torch.randn(rank, 8) * 0.01, f"{layer}.lora_B.weight": torch.randn(8, rank) * 0.01}
    if tensor_alpha is not None:
        tensors[f"{layer}.alpha"] = torch.tensor(tensor_alpha, dtype=torch.float32)
    save_file(tensors, str(path), metadata=info.to_metadata())
    return path


@pytest.mark.parametrize("alpha, tensor_alpha", [(1e38, None), (16.0, 1e38), (16.0, 2e5), (3e5, None)],
                         ids=["meta-1e38", "tensor-1e38", "tensor-past-fp16", "meta-past-fp16"])
def test_a_v1_v2_lora_with_an_absurd_alpha_is_refused_naming_file_value_and_fix(tmp_path, alpha, tensor_alpha):
    """A finite alpha of 1e38 (or one whose alpha / rank is past fp16's largest number) was read as valid: the merged
    weights overflowed and the video rendered as NaN noise without a word."""
    from echomimic_lib.lora import load_checked

    path = _v12_lora(tmp_path / "absurd.safetensors", alpha, tensor_alpha)
    with pytest.raises(WeightsError) as err:
        load_checked(path, "v2")
    text = str(err.value)
    assert str(path) in text and "alpha" in text and "65504" in text and "export" in text.lower(), text


def test_a_released_like_lora_still_loads_with_its_scale(tmp_path):
    """Parity: ordinary alphas (alpha = rank, 2 x rank, rsLoRA) load as before."""
    from echomimic_lib.lora import load_checked

    a = load_checked(_v12_lora(tmp_path / "ok.safetensors", 4.0, 4.0), "v2")
    assert a.scale(next(iter(a.layers))) == 2.0
    b = load_checked(_v12_lora(tmp_path / "meta.safetensors", 32.0, None, rank=16), "v2")
    assert b.scale(next(iter(b.layers))) == 2.0


@pytest.mark.parametrize("alpha", [1e38, 4 * 70000.0])
def test_a_wan_lora_with_an_absurd_alpha_is_refused_naming_file_value_and_fix(tmp_path, alpha):
    from echomimic_lib.lora.wan_files import read_wan_lora

    path = tmp_path / "wan.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 8) * 0.01,
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(8, 4) * 0.01,
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(alpha)}, str(path))
    with pytest.raises(WeightsError) as err:
        read_wan_lora(path)
    text = str(err.value)
    assert str(path) in text and "alpha" in text and "65504" in text, text


def test_an_ordinary_wan_lora_alpha_still_reads(tmp_path):
    from echomimic_lib.lora.wan_files import read_wan_lora

    path = tmp_path / "wan.safetensors"
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 8),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(8, 4),
               "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(8.0)}, str(path))
    assert read_wan_lora(path).groups


def test_writing_a_lora_with_an_absurd_alpha_is_refused_before_the_file_is_written(tmp_path):
    """The trainer's export writes through write_lora: an alpha that no reader takes is refused there, nothing written."""
    from echomimic_lib.lora.files import LoraInfo, write_lora

    dest = tmp_path / "out.safetensors"
    layer = "denoiser.a.to_q"
    with pytest.raises(WeightsError, match="alpha"):
        write_lora(dest, {f"{layer}.lora_A.weight": torch.zeros(2, 4), f"{layer}.lora_B.weight": torch.zeros(4, 2)},
                   LoraInfo(weights="v2", rank=2, alpha=1e38))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("yaml_lora", ["{rank: 2, alpha: 1.0e+38, targets: [q]}"])
def test_a_training_config_with_an_absurd_lora_alpha_is_refused_before_training(tmp_path, yaml_lora):
    """`lora.alpha: 1e38` passed the `alpha > 0` check: every step's loss was NaN."""
    from trainer.config import ConfigError
    from trainer.config_file import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\npreset: v1_lora_identity\nlora: {yaml_lora}\n"
                   f"model: {{init: echomimic, echomimic_path: {tmp_path}}}\ndata: {{roots: [{tmp_path}], num_workers: 0}}\n")
    with pytest.raises(ConfigError, match="lora.alpha"):
        load_config(str(cfg))


def test_a_v3_training_config_with_an_absurd_lora_alpha_is_refused(tmp_path):
    from trainer.config import ConfigError
    from trainer.v3.config import V3TrainConfig

    cfg = V3TrainConfig()
    cfg.output_dir, cfg.model.path, cfg.data.roots = str(tmp_path / "run"), str(tmp_path), [str(tmp_path)]
    cfg.lora.alpha = 1e38
    with pytest.raises(ConfigError, match="lora.alpha"):
        cfg.validate()


# ------------------------------------------------------------------ waveform.check_sample_rate
@pytest.mark.parametrize("rate", [10 ** 400, 10 ** 5000], ids=["400-digits", "5000-digits"])
def test_a_sample_rate_integer_past_any_float_is_a_clear_error(rate):
    """An AUDIO whose sample_rate is a huge integer (a custom node, a damaged header read as int) escaped the new check
    as a bare OverflowError (int too large to convert to float) in the Sampler and Save nodes."""
    from echomimic_lib.audio.waveform import check_sample_rate

    with pytest.raises(EchoMimicError, match="sample rate .*digits.* is above"):
        check_sample_rate(rate)


# ------------------------------------------------------------------ trainer: store.check_clips_present
@posix_only
@pytest.mark.parametrize("name", ["frames.idx.npy", "frames.bin"])
def test_a_pipe_in_a_prepared_clip_is_named_not_waited_on(tmp_path, name):
    """The new cut-short check opened every clip's frames.idx.npy before training: a named pipe there (a hand-made or
    hostile dataset) hung the run for ever, before anything was said."""
    import subprocess
    import textwrap

    clip = tmp_path / "shard-00000" / "c1"
    clip.mkdir(parents=True)
    (clip / "clip.json").write_text("{}")
    (clip / "frames.bin").write_bytes(b"x" * 10)
    import numpy as np

    np.save(clip / "frames.idx.npy", np.array([0, 10], dtype=np.int64))
    (clip / name).unlink()
    os.mkfifo(clip / name)
    code = textwrap.dedent(f"""
        from pathlib import Path
        from trainer.data.store import ClipEntry, DamagedClipError, check_clips_present
        try:
            check_clips_present([ClipEntry("c1", Path({str(clip)!r}), 0, 1, 25.0, "video")])
        except DamagedClipError as exc:
            print("REFUSED", exc)
        """)
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    try:  # (a child process: the old code blocks in open() on the pipe)
        out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60).stdout
    except subprocess.TimeoutExpired:
        pytest.fail("check_clips_present waited on the pipe")
    assert "REFUSED" in out and name in out and "not a regular file" in out, out


@posix_only
def test_a_users_file_named_like_the_queue_state_lock_is_never_overwritten(tmp_path, capsys):
    """`echomimic queue --state notes.json` keeps its lock in `notes.json.lock`: a user's own file of that name was
    truncated and overwritten with the holder's mark. Now the state is not kept (said), the file left as it was."""
    from echomimic_lib.jobs.queue_state import QueueState

    mine = tmp_path / "notes.json.lock"
    mine.write_text("my own notes\n")
    book = QueueState(tmp_path / "notes.json")
    book.claim(["echomimic/a__b"])
    assert mine.read_text() == "my own notes\n"
    err = capsys.readouterr().err
    assert "notes.json.lock" in err and "not a lock file" in err and not book.ok, err
    other = QueueState(tmp_path / "other.json")  # a lock file a run left (its mark) is used as before
    other.claim(["echomimic/a__b"])
    other.release()
    assert other.ok and json.loads((tmp_path / "other.json.lock").read_text())["pid"] == os.getpid()
    again = QueueState(tmp_path / "other.json")
    again.claim(["echomimic/a__b"])
    assert again.ok


# ------------------------------------------------------------------ batch: --workers checked before the rows
def test_an_absurd_workers_count_is_refused_not_an_out_of_memory(tmp_path, capsys):
    """`echomimic batch --workers 1000000000000` (a typo, a pasted number): the new early --device check built a list of
    that many device names and the batch ended in "out of memory (); use a smaller --width/--height ..." (10**9: gigabytes
    allocated first)."""
    from echomimic_lib.cli import main as cli

    (tmp_path / "jobs.jsonl").write_text('{"name": "c1", "reference": "a.png", "audio": "a.wav"}\n')
    rc = cli(["batch", str(tmp_path / "jobs.jsonl"), "-o", str(tmp_path / "out"), "-q", "--device", "cpu", "--workers",
              "1000000000000", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "--workers 1000000000000: use at most" in err and "memory" not in err, err


@posix_only
def test_a_file_moved_onto_the_claims_name_during_the_render_is_not_removed_at_its_end(tmp_path):
    """The claim file was removed by name when the render ended: a file the user moved to that name meanwhile (their own
    `.out.mp4.lock`) was deleted with it."""
    from echomimic_lib.jobs.output_file import OutputClaim

    claim = tmp_path / ".out.mp4.lock"
    with OutputClaim(tmp_path / "out.mp4"):
        (tmp_path / "mine").write_text("user data")
        os.replace(tmp_path / "mine", claim)
    assert claim.read_text() == "user data"


def test_the_queue_state_is_written_when_an_argument_holds_bytes_that_are_not_utf8(tmp_path, monkeypatch):
    """`echomimic queue --portraits /data/caf\\xe9` (a folder named in Latin-1 on Linux): Python reads the byte as a lone
    surrogate, the run's command line went into the state file's text and writing it ended in a UnicodeEncodeError
    traceback. Now it is escaped: written, and read back the same."""
    from echomimic_lib.jobs.queue_state import QueueState, read_state

    monkeypatch.setattr(sys, "argv", ["echomimic", "queue", "--portraits", "/data/caf\udce9"])
    book = QueueState(tmp_path / "state.json")
    book.claim(["echomimic/caf\udce9__a"])
    book.record("http://127.0.0.1:8188", "echomimic/caf\udce9__a", "f" * 16, "p1", files=["caf\udce9.mp4"])
    assert book.ok
    disk = read_state(tmp_path / "state.json")
    assert disk["servers"]["http://127.0.0.1:8188"]["echomimic/caf\udce9__a"]["files"] == ["caf\udce9.mp4"]
    assert any("caf\udce9" in run["command"] for run in disk["runs"].values())


@pytest.mark.parametrize("lora", [{"rank": 2, "alpha": 1e38}, {"rank": 2, "alpha": "x"}, {"rank": 0, "alpha": 2}],
                         ids=["alpha-1e38", "alpha-text", "rank-0"])
def test_v3_export_of_a_checkpoint_with_an_absurd_or_damaged_alpha_is_refused_before_writing(tmp_path, lora):
    """`echomimic-train v3-export --no-verify` of a checkpoint whose meta.json says `"alpha": 1e38` (a run trained before
    the config refused it, or an edited record) wrote a LoRA every reader refuses (verify: after the whole write); a
    text alpha or rank 0 ended in a ValueError / ZeroDivisionError traceback."""
    from trainer.v3.lora import export_wan_lora

    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text(json.dumps({"step": 5, "family": "v3", "lora": {
        **lora, "targets": ["q"], "layers": 1, "base": {"path": str(tmp_path)}}}))
    save_file({"blocks.0.self_attn.q.lora_A.default.weight": torch.zeros(2, 4),
               "blocks.0.self_attn.q.lora_B.default.weight": torch.zeros(4, 2)}, str(ckpt / "model.safetensors"))
    dest = tmp_path / "out"
    with pytest.raises(Exception) as err:
        export_wan_lora(ckpt, dest / "x.safetensors", verify=False)
    assert type(err.value).__name__ in ("ConfigError", "WeightsError"), repr(err.value)
    assert "alpha" in str(err.value) or "rank" in str(err.value)
    assert not dest.exists()


@pytest.mark.parametrize("alpha", ["x", None, 0])
def test_export_of_a_v1_v2_checkpoint_with_a_damaged_lora_alpha_is_a_clear_error(tmp_path, capsys, alpha):
    """`echomimic-train export` of a LoRA checkpoint whose meta.json says `"alpha": "x"` / null ended in a ValueError /
    TypeError traceback (0: a ZeroDivisionError-free file every reader refuses)."""
    from tests.test_trust import _fake_checkpoint
    from trainer.cli import main

    ckpt = _fake_checkpoint(tmp_path, True)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["lora"]["alpha"] = alpha
    (ckpt / "meta.json").write_text(json.dumps(meta))
    assert main(["export", str(ckpt), str(tmp_path / "out"), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert "meta.json" in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ nodes/base: NaN / inf in a number input
def _nodes_number_cases():
    from tests.test_comfy_number_links import _number_cases

    return _number_cases()


@pytest.mark.parametrize("node,name,typ", _nodes_number_cases())
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_in_a_number_input_never_escapes_as_a_python_error(node, name, typ, value):
    """The new number check let NaN / inf through (they are floats): a link from a math node (0/0) into a number input
    that a node does not check itself failed deep inside ("cannot convert float NaN to integer", OverflowError,
    AttributeError). Now: the node's own check, or the input named."""
    from tests._pack import sub
    from tests.test_comfy_user_5 import _arguments

    cls = sub("nodes").NODE_CLASS_MAPPINGS[node]
    try:  # (a node that never reads the input, or fails first on the test's stand-ins, says so clearly: fine)
        getattr(cls(), cls.FUNCTION)(**_arguments(cls, name, value))
    except sub("echomimic_lib.errors").EchoMimicError:
        pass

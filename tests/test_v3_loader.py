"""Loading the official EchoMimicV3 flash-pro release layout (base folder + V3 file) strictly."""
from __future__ import annotations

import pytest
import torch

from echomimic_lib.errors import WeightsError
from echomimic_lib.models.wan import load_v3_transformer
from echomimic_lib.models.wan.loader import is_audio_key
from tests._v3_tiny import inputs, tiny_model, write_release


def _out(model):
    with torch.no_grad():
        return model(**inputs(model.cfg))


def test_full_and_partial_v3_files_give_the_same_model(tmp_path):
    ref = tiny_model()
    base, v3, sd = write_release(ref, tmp_path / "full", "full")
    m_full, rep_full = load_v3_transformer(base, v3)
    assert len(rep_full.from_v3) == len(sd) and not rep_full.from_base
    assert len(rep_full.v3_overrode_base) == sum(not is_audio_key(k) for k in sd)
    base2, v3_audio, _ = write_release(ref, tmp_path / "audio", "audio")
    m_part, rep_part = load_v3_transformer(base2, v3_audio)
    assert sorted(rep_part.from_v3) == sorted(k for k in sd if is_audio_key(k))
    assert sorted(rep_part.from_base) == sorted(k for k in sd if not is_audio_key(k))
    assert "from the base file" in rep_part.summary()
    assert m_part.cfg == m_full.cfg and m_full.cfg.clip_dim == ref.cfg.clip_dim
    assert m_full.cfg.audio.blocks * m_full.cfg.audio.channels == ref.cfg.audio.blocks * ref.cfg.audio.channels
    for k, v in sd.items():
        assert torch.equal(m_full.state_dict()[k], v.float()), k
    assert torch.equal(_out(m_full), _out(m_part))


def test_state_dict_wrapper_pth(tmp_path):
    ref = tiny_model()
    base, v3, sd = write_release(ref, tmp_path, "full")
    wrapped = tmp_path / "v3.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if is_audio_key(k)}}, wrapped)
    model, report = load_v3_transformer(base, wrapped)
    assert all(is_audio_key(k) for k in report.from_v3)
    assert torch.equal(model.state_dict()["blocks.1.cross_attn.k_audio.weight"], sd["blocks.1.cross_attn.k_audio.weight"].float())


def _rewrite(v3, mutate):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(v3))
    mutate(sd)
    save_file(sd, str(v3))


def test_missing_audio_key_is_named(tmp_path):
    base, v3, _ = write_release(tiny_model(), tmp_path, "audio")
    _rewrite(v3, lambda sd: sd.pop("blocks.1.cross_attn.norm_k_audio.weight"))
    with pytest.raises(WeightsError, match=r"blocks\.1\.cross_attn\.norm_k_audio\.weight"):
        load_v3_transformer(base, v3)


def test_audio_keys_only_in_the_base_file_are_refused(tmp_path):
    from safetensors.torch import save_file

    ref = tiny_model()
    base, v3, sd = write_release(ref, tmp_path, "audio")
    save_file(sd, str(base / "diffusion_pytorch_model.safetensors"))  # a "base" holding everything
    save_file({k: v for k, v in sd.items() if k.startswith("audio_injection.")}, str(v3))
    with pytest.raises(WeightsError, match=r"blocks\.0\.cross_attn\.(k|q|v)_audio.*must come from the V3 file"):
        load_v3_transformer(base, v3)


def test_misshaped_audio_key_is_named(tmp_path):
    base, v3, _ = write_release(tiny_model(), tmp_path, "audio")
    _rewrite(v3, lambda sd: sd.__setitem__("blocks.0.cross_attn.v_audio.weight", torch.zeros(3, 3, dtype=torch.float16)))
    with pytest.raises(WeightsError, match=r"blocks\.0\.cross_attn\.v_audio\.weight.*shape \(3, 3\)"):
        load_v3_transformer(base, v3)


def test_unexpected_key_and_non_flash_file(tmp_path):
    base, v3, _ = write_release(tiny_model(), tmp_path, "audio")
    _rewrite(v3, lambda sd: sd.__setitem__("blocks.0.cross_attn.extra.weight", torch.zeros(2)))
    with pytest.raises(WeightsError, match=r"unexpected.*blocks\.0\.cross_attn\.extra\.weight"):
        load_v3_transformer(base, v3)
    _rewrite(v3, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("audio_injection.")])
    with pytest.raises(WeightsError, match="audio_injection.proj1.weight"):
        load_v3_transformer(base, v3)


def test_missing_base_weights(tmp_path):
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors"):
        load_v3_transformer(tmp_path, tmp_path / "x.safetensors")

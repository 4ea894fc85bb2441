"""Architecture facts: dependency direction, import hygiene, official parameter counts (meta device)."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echomimic_lib.config import SD15, TINY, EchoConfig, unet_config_dict, inference_config_dict
from echomimic_lib.models.unet import ConditionEncoder, EchoUNet
from tests._import_graph import circles, folder_graph, import_graph, wrong_direction

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("echomimic_lib", "nodes", "trainer", "bench")
FORBIDDEN = {"comfy", "comfy_extras", "comfy_api", "folder_paths", "server", "nodes", "trainer", "execution"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["echomimic_lib", "trainer"])
def test_library_and_trainer_never_import_comfyui_or_nodes(package):
    offenders = {}
    for py in (ROOT / package).rglob("*.py"):
        bad = _imports(py) & (FORBIDDEN - ({"trainer"} if package == "trainer" else set()))
        if bad:
            offenders[str(py.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"forbidden imports: {offenders}"


def test_importing_the_library_has_no_side_effects(tmp_path):
    """Import every module of echomimic_lib in a fresh interpreter: no files, no env changes, no output."""
    code = (
        "import os, sys, pkgutil, importlib, json\n"
        "before = dict(os.environ)\n"
        "import echomimic_lib\n"
        "mods = [m.name for m in pkgutil.walk_packages(echomimic_lib.__path__, 'echomimic_lib.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}\n"
        "print(json.dumps({'n': len(mods), 'env': sorted(changed)}))\n"
    )
    env = dict(os.environ, HOME=str(tmp_path), HF_HUB_OFFLINE="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["n"] >= 10
    assert report["env"] == []
    created = [p for p in tmp_path.rglob("*")]
    assert created == [], f"importing created files: {created[:5]}"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_circle_and_direction_checks_catch_what_they_are_for(tmp_path):
    """The checks below on a made-up tree: a circle through a function-level, a relative and a TYPE_CHECKING
    import, a package face that is no circle, an engine module importing a job, the library importing nodes."""
    root = _tree(tmp_path, {
        "echomimic_lib/__init__.py": "",
        "echomimic_lib/a.py": "def f():\n    from .jobs import b\n",
        "echomimic_lib/jobs/__init__.py": "from .b import g\n",
        "echomimic_lib/jobs/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from echomimic_lib.c import h\n",
        "echomimic_lib/c.py": "import echomimic_lib.a\nfrom nodes import paths\n",
        "echomimic_lib/cli/__init__.py": "from ..jobs import b\nfrom . import run\n",
        "echomimic_lib/cli/run.py": "from ..a import f\n",
        "nodes/__init__.py": "from . import x\n",
        "nodes/x.py": "from ..echomimic_lib.cli import run\n",
        "nodes/paths.py": "",
    })
    graph = import_graph(root, ("echomimic_lib", "nodes"))
    assert graph["echomimic_lib.cli"] == {"echomimic_lib.jobs.b", "echomimic_lib.cli.run"}
    assert circles(graph) == [["echomimic_lib.a", "echomimic_lib.c", "echomimic_lib.jobs.b"]]
    assert circles(folder_graph(graph)) == [["echomimic_lib.a", "echomimic_lib.c", "echomimic_lib.jobs"]]
    assert wrong_direction(graph) == [
        "echomimic_lib.a -> echomimic_lib.jobs.b: the engine must not import a job",
        "echomimic_lib.c -> nodes.paths: echomimic_lib must not import nodes",
    ]


@pytest.fixture(scope="module")
def graph():
    g = import_graph(ROOT, PACKAGES)
    assert len(g) > 120 and all(any(m.startswith(p) for m in g) for p in PACKAGES)
    return g


def test_no_import_circle_anywhere(graph):
    """Library, nodes, trainer, bench: no modules that import each other in a loop, however indirectly."""
    assert circles(graph) == []


def test_the_librarys_folders_form_layers(graph):
    """No circle between echomimic_lib's subpackages and top-level modules either: each folder is a layer."""
    assert circles(folder_graph(graph)) == []


def test_imports_point_one_way(graph):
    """nodes -> echomimic_lib <- trainer (bench uses both); inside the library front ends (cli) -> jobs -> engine."""
    assert wrong_direction(graph) == []
    assert any(b.startswith("echomimic_lib.jobs") for b in graph["echomimic_lib.cli.animate"])  # the rule has work to do


def test_the_layout_stays_small_enough_to_read():
    """At most 10 modules at the library's top level (subpackages aside); no Python file over 450 lines."""
    top = sorted(p.name for p in (ROOT / "echomimic_lib").glob("*.py"))
    assert len(top) <= 10, top
    skip = {".venv", ".git", "node_modules"}
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)
            and (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def _count(module, pred=lambda k: True):
    return sum(p.numel() for k, p in module.named_parameters() if pred(k))


def test_official_parameter_counts_on_meta_device():
    with torch.device("meta"):
        ref = EchoUNet(SD15, "reference")
        den = EchoUNet(SD15, "denoiser")
        loc1 = ConditionEncoder(1)
        enc3 = ConditionEncoder(3)
    assert next(ref.parameters()).device.type == "meta"
    assert _count(ref) == 815_521_280
    assert _count(den) == 1_303_145_604
    assert _count(den, lambda k: "motion_modules" in k) == 453_209_280
    assert _count(den, lambda k: ".attn2." in k) == 34_377_920
    # The 1-channel face locator is 1,086,192 (4.35 MB fp32, the HF file size); the 3-channel encoder
    # (landmark locator / V2 pose encoder) has 2 x 16 x 9 more weights in conv_in.
    assert _count(loc1) == 1_086_192
    assert _count(enc3) == 1_086_192 + 2 * 16 * 9
    # key counts of the released files
    assert len(ref.state_dict()) == 570
    assert len([k for k in den.state_dict() if "motion_modules" not in k]) == 686
    assert len([k for k in den.state_dict() if "motion_modules" in k]) == 588


def test_reference_unet_has_no_audio_attention_or_output_head():
    ref = EchoUNet(TINY, "reference")
    keys = list(ref.state_dict())
    assert not any(".attn2." in k or ".norm2." in k and "transformer_blocks" in k for k in keys)
    assert not any(k.startswith(("conv_out", "conv_norm_out")) for k in keys)
    assert len(ref.transformer_blocks()) == 16


def test_stage1_denoiser_without_motion_modules_runs():
    torch.manual_seed(0)
    den = EchoUNet(TINY, "denoiser", motion=False).eval()
    assert not any("motion_modules" in k for k in den.state_dict())
    x = torch.randn(1, 4, 1, 8, 8)
    with torch.no_grad():
        out = den(x, 10)  # no reference, audio or condition: the CFG-unconditional branch
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_config_round_trips_through_diffusers_json():
    cfg = TINY.with_(motion_max_len=24)
    back = EchoConfig.from_diffusers(unet_config_dict(cfg), inference_config_dict(cfg)["unet_additional_kwargs"])
    assert back == cfg


@pytest.mark.slow
def test_uncond_rows_equal_explicit_zero_inputs():
    """The CFG shortcuts (zero-audio constant, no reference for uncond rows) change no output."""
    torch.manual_seed(0)
    from echomimic_lib.tiny import randomize_

    ref = randomize_(EchoUNet(TINY, "reference"), 1).eval()
    den = randomize_(EchoUNet(TINY, "denoiser"), 2).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    audio = torch.randn(1, 3, 10, 384)
    cond = torch.randn(1, 32, 3, 8, 8)
    with torch.no_grad():
        bank, _ = ref.forward_reference(torch.randn(1, 4, 8, 8))
        kv = den.prepare_reference(bank)
        fast = den(x.repeat(2, 1, 1, 1, 1), 500, audio=audio, cond=cond, reference=kv, uncond_rows=1)
        uncond = den(x, 500, audio=torch.zeros_like(audio), cond=torch.zeros_like(cond), reference=None)
        condi = den(x, 500, audio=audio, cond=cond, reference=kv)
        masked = den(x.repeat(2, 1, 1, 1, 1), 500, audio=torch.cat([audio, audio]), cond=torch.cat([cond, cond]),
                     reference=kv, reference_mask=torch.tensor([False, True]))
    torch.testing.assert_close(fast[:1], uncond, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast[1:], condi, atol=1e-4, rtol=0)
    # a per-sample reference mask drops only the reference for that sample
    no_ref = den(x, 500, audio=audio, cond=cond, reference=None)
    torch.testing.assert_close(masked[:1], no_ref, atol=1e-4, rtol=0)
    assert (fast[1:] - fast[:1]).abs().max() > 1e-3


def test_batched_references_match_separate_calls():
    """Training batches carry one reference per sample; each sample must see only its own."""
    from echomimic_lib.tiny import randomize_

    ref = randomize_(EchoUNet(TINY, "reference"), 3).eval()
    den = randomize_(EchoUNet(TINY, "denoiser"), 4).eval()
    torch.manual_seed(1)
    r = torch.randn(2, 4, 8, 8)
    x = torch.randn(2, 4, 2, 8, 8)
    a = torch.randn(2, 2, 10, 384)
    with torch.no_grad():
        kv = den.prepare_reference(ref.forward_reference(r)[0])
        both = den(x, 300, audio=a, reference=kv, reference_mask=torch.tensor([True, False]))
        one = den(x[:1], 300, audio=a[:1], reference=den.prepare_reference(ref.forward_reference(r[:1])[0]))
        two = den(x[1:], 300, audio=a[1:], reference=None)
    torch.testing.assert_close(both[:1], one, atol=1e-4, rtol=0)
    torch.testing.assert_close(both[1:], two, atol=1e-4, rtol=0)


def test_fast_paths_give_the_plain_outputs():
    """Fused q/k/v projections and per-generation K/V join buffers (CPU) are exact rewrites: same outputs
    as separate projections and a per-call join, call after call (the buffers are reused)."""
    from echomimic_lib.tiny import randomize_

    ref = randomize_(EchoUNet(TINY, "reference"), 5).eval()
    den = randomize_(EchoUNet(TINY, "denoiser"), 6).eval()
    g = torch.Generator().manual_seed(2)
    x, audio = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(1, 3, 10, 384, generator=g)
    with torch.no_grad():
        bank, _ = ref.forward_reference(torch.randn(1, 4, 8, 8, generator=g))
        plain_kv = den.prepare_reference(bank, join_budget=0)
        plain = [den(x, t, audio=audio, reference=plain_kv, uncond_rows=1) for t in (700, 300)]
        assert den.fuse_projections() == 16 + 2 * 21  # every attn1 and temporal attention; attn2 reads the audio
        assert den.fuse_projections() == 16 + 2 * 21  # idempotent
        kv = den.prepare_reference(bank)
        fast = [den(x, t, audio=audio, reference=kv, uncond_rows=1) for t in (700, 300)]
    assert kv.buffer_bytes > 0
    for a, b in zip(plain, fast):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # the fused weights are the same parameters, with the official keys and values
    assert set(den.state_dict()) == set(EchoUNet(TINY, "denoiser").state_dict())
    kv.release()
    assert kv.buffer_bytes == 0
    with torch.no_grad():  # channels-last convolutions (a GPU layout option): same outputs
        den.set_channels_last(True)
        nhwc = den(x, 700, audio=audio, reference=kv, uncond_rows=1)
        den.set_channels_last(False)
    torch.testing.assert_close(nhwc, plain[0], atol=1e-4, rtol=0)  # another convolution algorithm: rounding


@pytest.mark.slow
def test_compiled_regions_capture_whole_and_match_eager():
    """Regional torch.compile: each ResNet block / spatial transformer / motion module captures as one graph
    (fullgraph: no graph break) and computes what eager does (aot_eager: traced, no code generated)."""
    import torch._dynamo

    from echomimic_lib.models.unet.compile import compile_regions, is_compiled, uncompile_regions
    from echomimic_lib.tiny import randomize_

    ref = randomize_(EchoUNet(TINY, "reference"), 7).eval()
    den = randomize_(EchoUNet(TINY, "denoiser"), 8).eval()
    g = torch.Generator().manual_seed(3)
    x, audio = torch.randn(2, 4, 2, 8, 8, generator=g), torch.randn(1, 2, 10, 384, generator=g)
    r = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        kv = den.prepare_reference(ref.forward_reference(r)[0])
        eager = den(x, 500, audio=audio, reference=kv, uncond_rows=1)
        torch._dynamo.reset()
        try:
            n = compile_regions(den.down_blocks[0], backend="aot_eager", fullgraph=True)
            n += compile_regions(den.mid_block, backend="aot_eager", fullgraph=True)
            assert n == 2 * 3 + 4 and is_compiled(den)  # 2 resnets, attentions, motion modules + mid 2 / 1 / 1
            kv = den.prepare_reference(ref.forward_reference(r)[0])
            assert kv.join_budget == 0  # a compiled graph must not depend on the block
            compiled = den(x, 500, audio=audio, reference=kv, uncond_rows=1)
        finally:
            uncompile_regions(den)
    assert not is_compiled(den)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


def test_fused_projections_also_for_comfyuis_castable_layers_while_they_do_not_cast():
    """In ComfyUI every Linear becomes a castable ``comfy.ops`` layer (stand-in below, ComfyUI's attributes):
    q/k/v still fuse while the layer computes with its stored weight, and not while it casts (partial load)."""
    from torch import nn

    from echomimic_lib.models.unet.attention import Attention
    from echomimic_lib.tiny import randomize_

    class CastableLinear(nn.Linear):  # comfy.ops.disable_weight_init.Linear's switches
        comfy_cast_weights = False
        weight_function: list = []
        bias_function: list = []

    den = randomize_(EchoUNet(TINY, "denoiser"), 6).eval()
    g = torch.Generator().manual_seed(3)
    x, audio = torch.randn(2, 4, 3, 8, 8, generator=g), torch.randn(1, 3, 10, 384, generator=g)
    with torch.no_grad():
        plain = den(x, 500, audio=audio, uncond_rows=1)
        for m in den.modules():
            if type(m) is nn.Linear:
                m.__class__ = CastableLinear
        attns = [m for m in den.modules() if isinstance(m, Attention)]
        attns[0].to_k.comfy_cast_weights = True  # one layer casting: that attention stays unfused
        assert den.fuse_projections() == 16 + 2 * 21 - 1
        assert attns[0].fused_qkv_weight() is None
        assert sum(a.fused_qkv_weight() is not None for a in attns) == 16 + 2 * 21 - 1
        torch.testing.assert_close(den(x, 500, audio=audio, uncond_rows=1), plain, atol=1e-5, rtol=0)

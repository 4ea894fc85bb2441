"""``echomimic doctor``'s table: the report of :func:`echomimic_lib.jobs.doctor.diagnose` as plain text lines."""
from __future__ import annotations

from .comfy_paths import DEFAULT


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} B"


def _fix(indent: int, fix: str) -> list[str]:
    """A fix under ``fix:``: its first line after the label, each further line (a remark's comment line comes before
    its command) below it, aligned, so each line can be copied and pasted whole."""
    first, *rest = str(fix).split("\n")
    return [f"{' ' * indent}fix: {first}"] + [f"{' ' * (indent + 5)}{line}" for line in rest]


def _torch_lines(t: dict) -> list[str]:
    if not t.get("installed"):
        return [f"  torch         MISSING  {t['problem']}", *_fix(16, t["fix"])]
    hip = t.get("hip")
    cuda = f"ROCm/HIP {hip} (AMD)" if hip else f"CUDA {t['cuda']}" if t["cuda"] else "CPU build (no CUDA, no ROCm)"
    cudnn = f", {'MIOpen' if hip else 'cuDNN'} {t['cudnn']}" if t["cudnn"] else ""
    lines = [f"  torch         {t['version']}  {cuda}{cudnn}"]
    for g in t["gpus"]:
        lines.append(f"  GPU {g['index']:<9} {g['name']}, {g['memory_gib']} GiB ({'arch' if hip else 'compute'} {g['capability']})")
    if (t["cuda"] or hip) and not t["gpus"]:
        lines.append(f"  GPU           none visible{': ' + t['problem'] if t.get('problem') else ' (driver, CUDA_VISIBLE_DEVICES?)'}")
    lines.append(f"  MPS           {'available' if t['mps'] else 'not available'}")
    return lines


def _package_line(p: dict) -> list[str]:
    if p["status"] == "optional":
        return [f"  {p['name']:<22} -          optional, not installed ({p['purpose']})"]
    word = "ok" if p["status"] == "ok" else p["status"].upper()
    dist = f" [{p['distribution']}]" if p["distribution"] and p["distribution"] != p["name"] else ""
    lines = [f"  {p['name']:<22} {p['version'] or '-':<10} {word}{dist}  ({p['requirement']})"]
    if p["problem"]:
        lines += [f"      {p['problem']}", *_fix(6, p["fix"])]
    return lines


def _set_lines(s: dict) -> list[str]:
    label = f"{s['weights']} {s['variant'] or ''}".strip()
    status = {"ready": f"ready ({_gib(s['bytes'])})", "tiny": "tiny random weights (smoke runs; they animate noise)",
              "missing": f"MISSING {len(s['missing'])} file(s)", "broken": "BROKEN"}[s["status"]]
    lines = [f"  {label:<18} {status}"]
    lines += [f"      in {s['found_in']}"] if s.get("found_in") else []
    if len(s.get("choices") or ()) > 1:
        lines.append("      V3 Loader folders: " + ", ".join(f"{c['folder']} ({c['status']}, {c['path']})" for c in s["choices"]))
    lines += [f"      - {m}" for m in s["missing"]]
    lines += [f"      - {b['path']}: {b['problem']}" for b in s["broken"]]
    if s["fix"]:
        lines += _fix(6, s["fix"])
    return lines


def _file_lines(f: dict) -> list[str]:
    state = {"ready": f"ready ({_gib(f['bytes'])})  {f['path']}", "missing": "MISSING", "broken": "BROKEN"}[f["status"]]
    lines = [f"      {f['name']:<30} {state}{'  (optional)' if not f['required'] and f['status'] != 'ready' else ''}"]
    if f["status"] != "ready":
        lines += [f"          {f['problem']}"] if f["problem"] else []
        lines += [*_fix(10, f["fix"]), f"          needed for: {'; '.join(f['needed_for'])}"]
    return lines


def _shared_lines(p: dict) -> list[str]:
    if p["status"] == "ready":
        extra = f", {p['sequences']} sequence(s)" if p.get("sequences") else ""
        lines = [f"  {p['part']:<10} ready ({_gib(p['bytes'])}{extra})  {p['what']}"]
        if p.get("roots"):  # the gesture library over ComfyUI's pose roots: each with its sequences
            lines += [f"      {r['path']}: {r['sequences']} sequence(s)  (from {r['source']})" for r in p["roots"]]
            lines += [f"      note: {p['problem']}"] if p.get("problem") else []
        elif p.get("source"):
            lines.append(f"      {p['path']}  (from {p['source']})")
    else:
        lines = [f"  {p['part']:<10} {p['status'].upper()}  {p['what']}"]
    if p.get("files"):  # MediaPipe, DWPose: each file with its own state and fix
        for f in p["files"]:
            lines += _file_lines(f)
        return lines
    if p["status"] != "ready":
        lines += [f"      - {m}" for m in p["missing"]] + [f"      - {b['path']}: {b['problem']}" for b in p.get("broken", [])]
        if p["fix"]:
            lines += _fix(6, p["fix"])
    return lines


def _folder_lines(f: dict) -> list[str]:
    """A folder kind: its default folder(s) on the first line, then every folder extra_model_paths.yaml adds."""
    def one(r: dict) -> str:
        count = f" ({r['files']} model file(s))" if r["files"] is not None and r["present"] else ""
        return f"{r['path']}{count}" if r["present"] else f"{r['path']} (not there)"
    default = [r for r in f["roots"] if r["source"] == DEFAULT]
    there = ", ".join(one(r) for r in default if r["present"]) or "not there"
    lines = [f"  models/{f['kind']:<17} {there}  {f['used_for']}"]
    order = [r["path"] for r in f["roots"]]
    lines += [f"      + {one(r)}  from {r['source']} (searched {order.index(r['path']) + 1}.)" for r in f["roots"]
              if r not in default]
    return lines


def _comfyui_lines(c: dict) -> list[str]:
    f = c.get("detected")
    unknown = f is not None and f.get("base") and not f.get("code")  # Desktop's own ComfyUI folder not found
    lines = ["", f"ComfyUI {c['path']}" + (" (its base directory; ComfyUI's own folder was not found)" if unknown else "")]
    if f:  # --comfyui auto: what was found, and from which files
        lines.append(f"  found {f['kind']}" + (f": base directory {f['base']} ({f['base_from']})" if f["base"] else "")
                     + "".join(f"; model paths from {y}" for y in f["extra_model_paths"]))
        lines += [f"  note: {n}" for n in f["notes"]]
    d = c.get("directories") or {}
    for problem in d.get("problems", []) + c.get("extra_model_paths", {}).get("problems", []):
        lines.append(f"  PROBLEM {problem}")
    if d.get("base"):
        lines.append(f"  --base-directory {d['base']}: models {c['models_dir']}, input {d['input']}, output {d['output']}; custom nodes from "
                     f"{', '.join(d['custom_nodes'])} (this pack: {d['pack'] or 'not there'})")
    for f in c["folders"]:
        lines += _folder_lines(f)
    for p in c["core"]:
        state = {"ready": f"ready ({_gib(p['bytes'])}) {p['path']}", "missing": f"MISSING in {p['folder']}",
                 "broken": "BROKEN"}[p["status"]]
        lines.append(f"  {p['part']:<24} {state}  V3: {p['what']}")
        if p.get("source"):
            lines.append(f"      from {p['found_in']} ({p['source']})")
        if p["problem"]:
            lines.append(f"      {p['problem']}")
        if p["fix"]:
            lines += _fix(6, p["fix"])
    lines.append("  Workflows (what the nodes find)")
    for m in c["modes"]:
        label = f"{m['mode']} {m['variant'] or ''}".strip()
        state = "ready" if m["ready"] else "not ready: " + ", ".join(m["missing"])
        lines.append(f"    {label + ':':<24} {state}{'; ' + '; '.join(m['notes']) if m['notes'] else ''}")
    lines += [f"  note: {n}" for n in c["notes"]]
    return lines


def render(report: dict) -> list[str]:
    env = report["environment"]
    lines = ["EchoMimic doctor (read-only: nothing was downloaded, written or loaded)", "", "Environment",
             f"  python        {env['python']['version']}  {env['python']['executable']}"]
    lines += _torch_lines(env["torch"])
    for p in env["packages"]:
        lines += _package_line(p)
    lines += ["", f"Models folder {report['models']}"]
    for s in report["weight_sets"]:
        lines += _set_lines(s)
    lines += ["", "Shared parts"]
    for p in report["shared"]:
        lines += _shared_lines(p)
    if report.get("comfyui"):
        lines += _comfyui_lines(report["comfyui"])
    lines += ["", "Runnable now (echomimic animate)"]
    for m in report["modes"]:
        label = f"{m['mode']} {m['variant'] or ''}".strip()
        state = "ready" if m["ready"] else f"not ready ({m.get('why') or m['status'] + ' weights'})"
        lines.append(f"  {label + ':':<26} {state}{'; ' + m['note'] if m['note'] else ''}")
    lines.append("")
    if report["ok"]:
        lines.append("All checked parts are ready." + (" (--strict: no tiny random weights among them)" if report.get("strict") else ""))
    else:
        lines.append(f"{len(report['problems'])} problem(s): " + "; ".join(report["problems"]))
    return lines

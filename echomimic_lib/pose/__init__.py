"""EchoMimicV2 hand-pose sequences (no ComfyUI here)."""

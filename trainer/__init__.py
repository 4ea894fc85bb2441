"""Standalone EchoMimic trainer (uses echomimic_lib, never ComfyUI)."""

"""EchoMimic library: front ends (cli/), headless jobs (jobs/) and the engine they use (models/, pipeline/,
audio/, landmarks/, pose/, frames/, io/, memory/, evaluate/ and a few shared modules). No ComfyUI here."""
__version__ = "0.1.0"

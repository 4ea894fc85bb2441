"""EchoMimic library: networks, weights, audio, landmarks, poses and the sampler. No ComfyUI here."""
__version__ = "0.1.0"

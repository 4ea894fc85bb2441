"""EchoMimic networks, one subpackage per model family:

- :mod:`.unet`: the SD1.5-based UNets of EchoMimic V1 and V2 (reference, denoiser + motion modules,
  condition encoder);
- ``wan``: the Wan2.1 DiT of EchoMimicV3 (network and loader).

Nothing is imported here, so one family loads without the other.
"""

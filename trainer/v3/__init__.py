"""EchoMimicV3 flash-pro LoRA training (``echomimic-train v3-fit`` / ``v3-export``); see docs/training.md."""

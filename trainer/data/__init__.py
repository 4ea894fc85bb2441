"""Training data: ``prepare`` (videos -> clips on disk), ``store`` (the on-disk format), ``dataset`` (samples
streamed from disk + the resumable sampler), ``augment`` (Random Landmark Selection, audio augmentation)."""

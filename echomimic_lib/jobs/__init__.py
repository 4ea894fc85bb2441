"""Headless jobs, one module per job with its preflight and plan: ``animate`` (a portrait and an audio
-> a video), ``dub`` (new speech for an existing video), and the ComfyUI batch-queue client.

Jobs sit between the front ends (:mod:`echomimic_lib.cli`, the ComfyUI nodes) and the engine (models,
pipeline, audio, landmarks, pose, frames, io): they import the engine, the engine never imports them.
"""

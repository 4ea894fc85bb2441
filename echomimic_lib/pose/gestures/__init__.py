"""Gestures from speech (EchoMimicV2 without a pose video): a library of gesture units cut from pose sequences
(:mod:`.library`), cheap speech analysis (:mod:`.speech`) and motion matching (:mod:`.planner` plans, :mod:`.synth`
draws).

Typical use::

    lib = load_library("models/echomimic/poses")          # indexed once, cached beside the folders
    speech = analyze_speech("speech.wav", fps=24)           # loudness, onsets, stresses, pauses, pitch
    seq = synthesize(lib, speech, seed=0, reference=ref_pose)   # a PoseSequence, len(seq) == speech.num_frames
"""
from .library import GestureLibrary, find_sources, load_library
from .speech import SpeechFeatures, analyze_speech
from .planner import GestureOptions
from .synth import synthesize, synthesize_for_audio

__all__ = ["GestureLibrary", "GestureOptions", "SpeechFeatures", "analyze_speech", "find_sources", "load_library",
           "synthesize", "synthesize_for_audio"]

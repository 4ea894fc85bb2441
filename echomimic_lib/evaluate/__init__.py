"""Quality metrics for a talking-head result.

Weight-free (always available, CPU): audio-visual offset and sync strength with its confidence against a null
(:mod:`.sync`), landmark jitter, background flicker and face-detection rate (:mod:`.stability`), shape drift to the
reference (:mod:`.identity`). Learned, with the user's weights: SyncNet LSE-C / LSE-D (:mod:`.syncnet`,
:mod:`.mfcc`), ArcFace CSIM (:mod:`.arcface`), FID (:mod:`.fid`, :mod:`.inception`) and FVD (:mod:`.fvd`,
:mod:`.i3d`) against real videos, both through :mod:`.frechet`. :func:`evaluate` runs them on a :class:`Clip` (:mod:`.inputs`; a video file's frames streamed, every
per-frame metric fed in one pass, :mod:`.passes`) and returns an :class:`EvalReport` (:mod:`.report`); :func:`sync_plot` draws mouth opening against audio energy (:mod:`.plot`).
"""
from .inputs import Clip, clip_from_arrays, load_clip
from .plot import save_png, sync_plot
from .report import EvalReport, table
from .run import LearnedModels, evaluate, score_frames

__all__ = ["Clip", "clip_from_arrays", "load_clip", "evaluate", "score_frames", "LearnedModels", "EvalReport", "table", "sync_plot",
           "save_png"]

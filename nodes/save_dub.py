"""EchoMimic Save Dub: a dub's full-size frames (Paste Back's) written to an mp4 with the source video's colour
description, as ``echomimic dub`` writes its output (:mod:`echomimic_lib.io.video_color`): the same matrix and range
for the RGB -> YUV conversion and the same four tags (matrix, primaries, transfer, range), so a player shows the
untouched pixels as it shows the source. Core's Create Video + Save Video do not carry the source's description (the
player guesses, and a BT.709 source's colours can shift). An untagged source gives an untagged output, as in the CLI.

``source_video``: Load Video's VIDEO (the file the frames came from: its ``get_stream_source()``, a path or an
in-memory file), or a path. The mp4 goes to ComfyUI's output folder as in the to-file samplers
(:class:`.to_file.VideoFile`: a temporary name renamed at the end; Cancel or an error leaves nothing)."""
from __future__ import annotations

import os

from ..echomimic_lib.errors import EchoMimicError
from ..echomimic_lib.io.streams import NoVideoStream
from ..echomimic_lib.io.video_color import describe_source, read_color
from . import comfy_bridge as C
from .base import Node, check_fps, frame_rate, link
from .payloads import image_batch
from .to_file import OUTPUTS, VideoFile, prefix_input

BLOCK = 16  # frames per encode call (Cancel is checked between two)


def source_color(video):
    """The colour description of the VIDEO (or path) the dubbed frames came from."""
    src = video.get_stream_source() if hasattr(video, "get_stream_source") else video
    if not (isinstance(src, (str, os.PathLike)) or hasattr(src, "read")):
        raise EchoMimicError("source_video: connect Load Video's VIDEO (the video whose frames went to Face Track and "
                             f"Paste Back); a {type(video).__name__} has no file to read the colour tags from.")
    try:
        return read_color(src, required=True)
    except NoVideoStream as exc:  # an audio file (a wav, or an m4a / mp3 with its cover picture): was taken as untagged
        name = src if isinstance(src, (str, os.PathLike)) else "the file Load Video gives"
        kinds = " and ".join(sorted(exc.kinds)) or "no"
        raise EchoMimicError(f"source_video: {name} has no video stream ({kinds} stream(s) only: an audio file?); Save "
                             "Dub reads the colour description of the video the dubbed frames came from. Connect Load "
                             "Video's VIDEO of that video (the one that went to Face Track), and the new speech to "
                             "'audio'.") from exc
    except EchoMimicError:
        raise
    except Exception as exc:
        raise EchoMimicError(f"source_video: cannot be read as a video ({exc}); connect Load Video's VIDEO, the video "
                             "the frames came from.") from exc


def save_dub(images, fps, source_video, filename_prefix: str, audio=None) -> dict:
    first = image_batch(images[:1] if hasattr(images, "shape") else images, "images")  # checked before any work
    fps = check_fps(fps)
    color = source_color(source_video)
    describe_source(color, "the source video")
    h, w = first.shape[1:3]
    video = VideoFile(filename_prefix, w, h, fps, audio, color=color)

    def run():
        for i in range(0, len(images), BLOCK):
            video.block(images[i:i + BLOCK, ..., :3])

    return video.write(run)


class EchoMimicSaveDub(Node):
    OUTPUT_NODE = True
    OUTPUTS = OUTPUTS
    DESCRIPTION = ("Writes a dub (Paste Back's frames) to an mp4 in the output folder with the source video's colour "
                   "tags and conversion (BT.709 stays BT.709, its range too), as `echomimic dub` does (core's Save "
                   "Video does not carry them).")

    @classmethod
    def inputs(cls):
        return {
            "images": link("IMAGE", "The dubbed frames (EchoMimic Paste Back's images)."),
            "fps": frame_rate("Their frame rate (link Paste Back's fps: the source video's)."),
            "source_video": link("VIDEO", "The source video (Load Video): its colour description goes to the output."),
            "filename_prefix": prefix_input("echomimic/dub"),
        }

    @classmethod
    def optional_inputs(cls):
        return {"audio": link("AUDIO", "The new speech (cut to the video's length).")}

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        return (filename_prefix is not None and C.prefix_problem(filename_prefix)) or True

    def execute(self, images, fps, source_video, filename_prefix, audio=None):
        return save_dub(images, fps, source_video, filename_prefix, audio)

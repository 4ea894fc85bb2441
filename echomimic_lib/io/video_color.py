"""The colour description of a video stream (matrix, primaries, transfer, range) and the RGB -> YUV conversion that
honours it when a video is written.

- A video the pack generates (sRGB frames, whose primaries are BT.709) is written as the web's standard HD video:
  BT.709 matrix, primaries and transfer, limited ("tv") range, all four tagged (:data:`GENERATED`). Untagged video
  is left to the player's guess (BT.601 for SD, BT.709 for HD, and players differ), which shifts its colours.
- ``echomimic dub`` (and in ComfyUI, EchoMimic Save Dub given the source video) keeps its source's description (:func:`read_color`): the frames are decoded with the source's
  own tags and encoded back with the same matrix and range, and the same four tags, so a player shows the output's
  untouched pixels as it shows the source. An untagged source gives an untagged output converted as before
  (swscale's default BT.601 matrix, limited range): the player then treats source and output alike.

Values are FFmpeg's (``AVColorSpace``, ``AVColorPrimaries``, ``AVColorTransferCharacteristic``, ``AVColorRange``),
as PyAV's codec contexts and frames report them; 2 (and 0 for the range) is "unspecified".
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

UNSPECIFIED = 2  # AVCOL_SPC / AVCOL_PRI / AVCOL_TRC _UNSPECIFIED
BT709 = 1  # AVCOL_SPC_BT709 = AVCOL_PRI_BT709 = AVCOL_TRC_BT709
RANGE_UNSPECIFIED, RANGE_LIMITED, RANGE_FULL = 0, 1, 2  # AVCOL_RANGE_ UNSPECIFIED / MPEG ("tv") / JPEG ("pc")
HDR_TRANSFERS = {16: "PQ (SMPTE ST 2084)", 18: "HLG (ARIB STD-B67)"}  # AVCOL_TRC_SMPTE2084, AVCOL_TRC_ARIB_STD_B67

# AVColorSpace -> the swscale matrix (SWS_CS_*) that converts to it; other matrices (RGB, YCgCo, ICtCp, ...) cannot
# be written as yuv420p H.264 here: the default matrix is used and the matrix is left untagged.
_SWS_MATRIX = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}  # bt709, fcc, bt470bg, smpte170m, smpte240m, bt2020nc/c
_NAMES = {"matrix": {1: "bt709", 4: "fcc", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m", 9: "bt2020nc", 10: "bt2020c"},
          "range": {1: "tv", 2: "pc"}}


@dataclass(frozen=True)
class ColorDescription:
    """A stream's colour description (FFmpeg's enum values) and its bit depth (as read; the output is 8-bit)."""
    matrix: int = UNSPECIFIED
    primaries: int = UNSPECIFIED
    transfer: int = UNSPECIFIED
    range: int = RANGE_UNSPECIFIED
    bits: int = 8

    @property
    def tagged(self) -> bool:
        return (self.matrix, self.primaries, self.transfer, self.range) != (UNSPECIFIED,) * 3 + (RANGE_UNSPECIFIED,)

    @property
    def hdr(self) -> bool:
        return self.transfer in HDR_TRANSFERS

    def written(self) -> "ColorDescription":
        """The description the written file carries: a matrix the writer cannot produce is left untagged."""
        matrix = self.matrix if self.matrix in _SWS_MATRIX else UNSPECIFIED
        return ColorDescription(matrix, self.primaries, self.transfer, self.range, 8)

    def __str__(self) -> str:
        if not self.tagged:
            return "untagged"
        from av.video.reformatter import ColorPrimaries, ColorTrc

        return (f"matrix {_NAMES['matrix'].get(self.matrix, self.matrix)}, primaries {_name(ColorPrimaries, self.primaries)}, "
                f"transfer {_name(ColorTrc, self.transfer)}, range {_NAMES['range'].get(self.range, self.range)}")


def _name(enum, value: int) -> str:
    try:
        return enum(value).name.lower()
    except ValueError:
        return str(value)


GENERATED = ColorDescription(BT709, BT709, BT709, RANGE_LIMITED)
UNTAGGED = ColorDescription()


def read_color(path: str | Path | IO[bytes], required: bool = False) -> ColorDescription:
    """The colour description of the first video stream (cover art aside) of a media file (:data:`UNTAGGED` when the file says nothing,
    or has no video stream; with ``required``, no video stream raises :class:`~.streams.NoVideoStream`). ``path``: a path,
    or a seekable binary file object (read from its start, and put back there)."""
    import av

    if not hasattr(path, "read"):
        return _read_color(av.open(str(path)), path, required)
    path.seek(0)
    try:
        return _read_color(av.open(path), "the source video", required)
    finally:
        path.seek(0)  # back at the start for whoever reads it next


def _read_color(container, name, required: bool = False) -> ColorDescription:
    from .streams import video_stream

    with container:
        stream = video_stream(container, name, required=required)  # cover art is no video stream
        if stream is None:
            return UNTAGGED
        cc = stream.codec_context
        fmt = cc.format
        bits = max((c.bits for c in fmt.components), default=8) if fmt is not None else 8
        return ColorDescription(int(cc.colorspace), int(cc.color_primaries), int(cc.color_trc), int(cc.color_range), bits)


def tag_codec(codec_context, color: ColorDescription) -> None:
    """Tag an encoder's codec context (the H.264 VUI and the mp4 ``colr`` box come from it)."""
    out = color.written()
    codec_context.colorspace, codec_context.color_primaries = out.matrix, out.primaries
    codec_context.color_trc, codec_context.color_range = out.transfer, out.range


def to_yuv420p(frame, color: ColorDescription):
    """An rgb24 ``av.VideoFrame`` converted to yuv420p with ``color``'s matrix and range and tagged with it; an untagged
    description returns the frame as it is (the encoder converts it as it always has: BT.601, limited range)."""
    if not color.tagged:
        return frame
    out = color.written()
    yuv = frame.reformat(format="yuv420p", dst_colorspace=_SWS_MATRIX.get(out.matrix),
                         dst_color_range=out.range if out.range in (RANGE_LIMITED, RANGE_FULL) else None)
    yuv.colorspace, yuv.color_primaries, yuv.color_trc, yuv.color_range = out.matrix, out.primaries, out.transfer, out.range
    return yuv


def describe_source(color: ColorDescription, what: str) -> None:
    """Log, once per video, what keeping ``color`` means when the output cannot carry the source as it is."""
    if color.bits > 8 or color.hdr:
        kind = f"HDR, {HDR_TRANSFERS[color.transfer]}" if color.hdr else "SDR"
        log.info("%s is %d-bit %s; the output is 8-bit H.264 with the same colour tags (%s): its colours match the "
                 "source, with coarser steps", what, color.bits, kind, color)
    if color.tagged and color.matrix not in _SWS_MATRIX and color.matrix != UNSPECIFIED:
        log.info("%s uses colour matrix %d, which the H.264 writer does not produce; the output uses the default "
                 "matrix, untagged", what, color.matrix)

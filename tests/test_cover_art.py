"""An audio file with cover art (an mp3's, m4a's or flac's picture: a video stream with disposition attached_pic) is
audio everywhere: its sound is read as any recording's, and no reader takes its picture for a one-frame video (the
readers refuse it as a video with :class:`NoVideoStream`, saying it is only a cover); a video that also carries a
cover is read by its real video stream."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from echomimic_lib.errors import EchoMimicError
from echomimic_lib.io.audio_file import read_audio
from echomimic_lib.io.video_io import NoVideoStream, VideoFrames, count_frames, probe, read_video, video_stream

RATE, SECONDS = 16000, 1.0
FORMATS = {"song.mp3": ("mp3", "libmp3lame", "png"), "song.m4a": ("mp4", "aac", "mjpeg"), "song.flac": ("flac", "flac", "png")}


def _cover(stream) -> list:
    """The packets of a 16x8 picture for a cover stream."""
    import av

    stream.width, stream.height = 16, 8
    stream.pix_fmt = "rgb24" if stream.codec_context.name == "png" else "yuvj420p"
    stream.disposition = av.stream.Disposition.attached_pic
    image = np.zeros((8, 16, 3), np.uint8)
    image[:, :8] = 200
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=stream.pix_fmt)
    return stream.encode(frame) + stream.encode()


def _speech(seconds: float = SECONDS) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)[None]


def _song(path: Path, fmt: str, acodec: str, vcodec: str) -> Path:
    """A second of sound with an embedded cover picture."""
    import av

    with av.open(str(path), "w", format=fmt) as out:
        audio = out.add_stream(acodec, rate=RATE, layout="mono")
        cover = out.add_stream(vcodec)
        for packet in _cover(cover):
            packet.stream = cover
            out.mux(packet)
        frame = av.AudioFrame.from_ndarray(_speech(), format="flt", layout="mono")
        frame.sample_rate = RATE
        out.mux(audio.encode(frame))
        out.mux(audio.encode())
    return path


@pytest.fixture(scope="module")
def songs(tmp_path_factory) -> dict[str, Path]:
    import av

    root = tmp_path_factory.mktemp("cover_art")
    made = {name: _song(root / name, *spec) for name, spec in FORMATS.items()}
    for path in made.values():  # what the test is about: a picture stream marked as cover art
        with av.open(str(path)) as c:
            assert [bool(s.disposition & av.stream.Disposition.attached_pic) for s in c.streams.video] == [True]
    return made


@pytest.mark.parametrize("name", list(FORMATS))
def test_an_audio_file_with_a_cover_is_audio(songs, name):
    from echomimic_lib.jobs.speech_input import probe_speech, read_speech

    path = songs[name]
    wav, sr = read_audio(path)
    assert sr == RATE and abs(wav.shape[1] / sr - SECONDS) < 0.1
    probe_speech(path)
    _, _, raw = read_speech(path)  # animate's and dub's --audio: decodable, long enough, audible
    assert abs(raw.num_samples_16k / 16000 - SECONDS) < 0.1
    info = probe(path)
    assert info["frames"] == 0 and info["width"] is None and abs(info["audio_seconds"] - SECONDS) < 0.1
    for read in (lambda: count_frames(path, 1), lambda: VideoFrames(path), lambda: read_video(path)):
        with pytest.raises(NoVideoStream, match="only a cover picture"):
            read()


def test_no_command_takes_a_cover_for_a_one_frame_video(songs, tmp_path, capsys):
    from echomimic_lib.cli import main as cli
    from echomimic_lib.jobs.pose_sources import check_pose_video
    from trainer.data.video import probe_video

    song = songs["song.m4a"]
    assert cli(["landmarks", str(song), "-o", str(tmp_path / "l.npz"), "--offline"]) == 2
    assert "no video frames (an audio file?)" in capsys.readouterr().err
    with pytest.raises(EchoMimicError, match="only a cover picture"):
        check_pose_video(song, "--pose")  # animate --pose VIDEO, echomimic poses --video
    assert cli(["dub", "--video", str(song), "--audio", str(songs["song.mp3"]), "-o", str(tmp_path / "d.mp4"),
                "--offline"]) == 2
    assert "only a cover picture" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no video stream"):
        probe_video(song)  # the trainer's data preparation skips it
    assert not list(tmp_path.iterdir())


def test_a_video_with_a_cover_is_read_by_its_video_stream(tmp_path):
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        cover = out.add_stream("mjpeg")
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 32, 16, "yuv420p"
        for packet in _cover(cover):
            packet.stream = cover
            out.mux(packet)
        for i in range(5):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((16, 32, 3), 40 * i, np.uint8), format="rgb24")))
        out.mux(video.encode())
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 2
    assert count_frames(path, 100) == 5 and VideoFrames(path).size == (32, 16)
    assert probe(path)["frames"] == 5 and read_video(path).frames.shape == (5, 16, 32, 3)


def test_the_cover_is_skipped_wherever_it_comes_among_the_streams():
    """mp4 and mp3 store the picture after the sound or video (so the files above give it as a later stream); other
    containers may list it first: the first video stream that is no cover is the video."""
    from types import SimpleNamespace

    import av

    cover = SimpleNamespace(disposition=av.stream.Disposition.attached_pic)
    real = SimpleNamespace(disposition=av.stream.Disposition.default)
    assert video_stream(SimpleNamespace(streams=SimpleNamespace(video=[cover, real]), name="x.mkv")) is real
    assert video_stream(SimpleNamespace(streams=SimpleNamespace(video=[cover]), name="x"), required=False) is None
    with pytest.raises(NoVideoStream, match="x.mka: the file has no video stream \\(only a cover picture"):
        video_stream(SimpleNamespace(streams=SimpleNamespace(video=[cover]), name="x.mka"))


def test_a_covers_colour_description_is_not_the_videos(songs):
    """The colour description a dub keeps is the video stream's: a cover picture (full-range JPEG/PNG) has none to give."""
    import av

    from echomimic_lib.io.video_color import UNTAGGED, read_color

    for path in songs.values():
        with av.open(str(path)) as c:
            cover_range = int(c.streams.video[0].codec_context.color_range)
        assert read_color(path) == UNTAGGED, (path.name, cover_range)

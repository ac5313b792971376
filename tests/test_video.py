"""Video pipeline: source URIs, sinks, the threaded pipeline with fake live sources, and ``edgeseg video``.

Over 450 lines because the fake live sources (breaking, reconnecting, stalling) are shared by the pipeline and the
command-line tests; splitting them would only move the fakes into a third file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edgeseg.cli import main
from edgeseg.runtime.errors import VideoSourceError
from edgeseg.runtime.metadata import ModelMeta
from edgeseg.runtime.preprocess import resize_labels
from edgeseg.runtime.video import (STAGES, ImageSequenceSink, OverlayRenderer, ReconnectPolicy, VideoFileSink,
                                   VideoPipeline, VideoSink, VideoSource, format_summary, open_sink, open_source,
                                   parse_source)
from edgeseg.runtime.video.pipeline import INCOMPLETE_ENDINGS
from edgeseg.runtime.video.sinks import opencv_has_gui
from edgeseg.runtime.video.sources import _ffmpeg_url, gstreamer_pipeline, opencv_has_gstreamer

FRAME_SIZE = (48, 64)  # height, width of every synthetic frame
PALETTE = [[200, 30, 30], [30, 180, 40], [40, 60, 220]]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every test here must leave no thread behind, whether its run ends, fails or is interrupted."""
    before = threading.active_count()
    yield
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


# -- fakes following the Segmenter contract and the VideoSource interface ----------------------------------------------

class FakeSegmenter:
    """Segmenter stand-in: the class of a pixel is its strongest RGB channel (red 0, green 1, blue 2).

    Frames of distinct pure colours therefore give known class maps, and a BGR/RGB mix-up anywhere in the pipeline
    shows up as red and blue swapped.
    """

    def __init__(self, input_size=(16, 16), delay_s: float = 0.0, fail_at: int | None = None):
        self.meta = ModelMeta(model="fake-net", classes=["red", "green", "blue"], palette=PALETTE)
        self.backend = SimpleNamespace(name="fake")
        self.providers = ["cpu"]
        self.input_size = input_size
        self.delay_s = delay_s
        self.fail_at = fail_at
        self.runs = 0

    def prepare(self, images):
        return np.stack([cv2.resize(image, self.input_size[::-1], interpolation=cv2.INTER_AREA) for image in images])

    def run(self, batch):
        self.runs += 1
        if self.fail_at is not None and self.runs >= self.fail_at:
            raise RuntimeError("model crashed")
        time.sleep(self.delay_s)
        return batch.argmax(axis=-1).astype(np.uint8)

    def finish(self, raw, sizes):
        return [resize_labels(ids, tuple(size)) for ids, size in zip(raw, sizes)]


def colour_frame(index: int) -> np.ndarray:
    """A BGR frame filled with pure red, green or blue in turn, so its class is ``index % 3``."""
    frame = np.zeros((*FRAME_SIZE, 3), dtype=np.uint8)
    frame[..., 2 - index % 3] = 255  # BGR channel order: class 0 (red) is channel 2
    return frame


class FakeLiveSource(VideoSource):
    """A camera stand-in that yields ``frames`` frames, ``interval_s`` apart, then breaks.

    It breaks by raising OSError, as a dropped connection does, or with ``silent_end`` by returning None, as a
    capture that stops delivering frames does.
    """

    def __init__(self, frames: int, interval_s: float = 0.0, silent_end: bool = False):
        self.uri = "fake://camera"
        self.is_live = True
        self.size = FRAME_SIZE
        self.remaining = frames
        self.interval_s = interval_s
        self.produced = 0
        self.silent_end = silent_end
        self.closed = False

    def read(self):
        if self.remaining == 0:
            if self.silent_end:
                return None
            raise OSError("connection reset")
        time.sleep(self.interval_s)
        self.remaining -= 1
        self.produced += 1
        return colour_frame(self.produced - 1)

    def close(self):
        self.closed = True


class ListSink(VideoSink):
    """Keeps copies of the frames it is given; optionally raises KeyboardInterrupt at a given frame (a Ctrl-C)."""

    name = "memory"

    def __init__(self, interrupt_at: int | None = None):
        self.frames: list[np.ndarray] = []
        self.interrupt_at = interrupt_at
        self.closed = self.aborted = False

    def write(self, frame):
        if self.interrupt_at is not None and len(self.frames) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.frames.append(frame.copy())

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


def write_video(path: Path, frames: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, FRAME_SIZE[::-1])
    assert writer.isOpened()
    for index in range(frames):
        writer.write(colour_frame(index))
    writer.release()
    return path


def count_video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def quiet_log(messages: list[str]):
    return messages.append


# -- URIs --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri, kind, location, index", [
    ("0", "v4l2", "/dev/video0", 0),
    ("3", "v4l2", "/dev/video3", 3),
    ("/dev/video2", "v4l2", "/dev/video2", 2),
    ("v4l2://1", "v4l2", "/dev/video1", 1),
    ("v4l2:///dev/video4", "v4l2", "/dev/video4", 4),
    ("csi://0", "csi", "csi://0", 0),
    ("csi://1", "csi", "csi://1", 1),
    ("rtsp://192.168.1.10:8554/live", "stream", "rtsp://192.168.1.10:8554/live", None),
    ("rtp://@:5000", "stream", "rtp://@:5000", None),
    ("http://example.com/stream.m3u8", "stream", "http://example.com/stream.m3u8", None),
    ("https://example.com/clip.mp4", "stream", "https://example.com/clip.mp4", None),
])
def test_parse_device_and_stream_uris(uri, kind, location, index):
    spec = parse_source(uri)
    assert (spec.kind, spec.location, spec.index, spec.uri) == (kind, location, index, uri)
    assert spec.is_live


def test_parse_local_paths(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    image = tmp_path / "photo.JPG"
    image.write_bytes(b"x")
    assert parse_source(str(video)).kind == "file"
    assert parse_source(f"file://{video}").location == str(video)
    assert parse_source(str(image)).kind == "image"
    assert parse_source(str(tmp_path)).kind == "folder"
    assert not parse_source(str(tmp_path)).is_live


@pytest.mark.parametrize("uri, fragment", [
    ("foo://bar", "unknown video source scheme"),
    ("display://", "unknown video source scheme"),
    ("/no/such/video.mp4", "no such file"),
    ("csi://front", "sensor id"),
    ("v4l2://usb", "camera index"),
    ("rtp://@", "UDP port"),
    ("rtsp://", "needs a host"),
])
def test_bad_source_uris_name_the_uri_and_list_the_forms(uri, fragment):
    with pytest.raises(VideoSourceError) as caught:
        parse_source(uri)
    message = str(caught.value)
    assert fragment in message and repr(uri) in message
    assert "csi://0" in message and "rtsp://" in message  # the accepted forms follow...
    assert "\n" not in message  # ...on the one line the CLI prints


def test_gstreamer_pipelines_are_built_without_opening_anything():
    csi = gstreamer_pipeline(parse_source("csi://1"))
    assert csi.startswith("nvarguscamerasrc sensor-id=1 ") and csi.rstrip().endswith("sync=false")
    assert "appsink" in csi
    rtp = gstreamer_pipeline(parse_source("rtp://@:5000"))
    assert "udpsrc port=5000" in rtp and "rtph264depay" in rtp
    rtsp = gstreamer_pipeline(parse_source("rtsp://cam.local:8554/x"))
    assert "uridecodebin uri=rtsp://cam.local:8554/x" in rtsp
    assert _ffmpeg_url("rtp://@:5000") == "rtp://0.0.0.0:5000"
    assert _ffmpeg_url("rtsp://cam.local/x") == "rtsp://cam.local/x"


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer: the missing-support error cannot show")
@pytest.mark.parametrize("uri, gst", [("csi://0", False), ("rtsp://127.0.0.1:1/none", True)])
def test_gstreamer_sources_need_an_opencv_with_gstreamer(uri, gst):
    with pytest.raises(VideoSourceError, match="GStreamer"):
        open_source(uri, gst=gst)


def test_help_lists_every_source_form(capsys):
    with pytest.raises(SystemExit):
        main(["video", "--help"])
    text = capsys.readouterr().out
    for form in ("video.mp4", "file://", "frames/", "photo.jpg", "/dev/video0", "v4l2://0", "csi://0", "rtsp://",
                 "rtp://", "http://", "display://", "%06d.png", "jetson-inference"):
        assert form in text, form


# -- sources and sinks -------------------------------------------------------------------------------------------------

def test_random_bytes_named_mp4_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoSourceError, match="bogus.mp4.*not a video"):
        open_source(str(bogus))


def test_video_file_source_reports_its_properties(tmp_path):
    with open_source(str(write_video(tmp_path / "clip.mp4", 7))) as source:
        assert not source.is_live
        assert source.frame_count == 7 and source.size == FRAME_SIZE and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert len(frames) == 7
    assert frames[0][..., 2].mean() > 200 and frames[0][..., 0].mean() < 50  # BGR: first frame is red


def test_image_folder_source_reads_in_natural_order(tmp_path):
    for number in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame{number}.png"), np.full((*FRAME_SIZE, 3), number, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(str(tmp_path)) as source:
        values = [int(frame[0, 0, 0]) for frame in source]
    assert values == [1, 2, 10]


def test_unreadable_image_in_folder_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(VideoSourceError, match="a.png"):
        open_source(str(tmp_path))


def test_open_sink_picks_the_output_kind(tmp_path):
    video = open_sink(str(tmp_path / "out.mp4"), fps=12)
    assert isinstance(video, VideoFileSink) and video.fps == 12
    video.abort()
    folder = open_sink(str(tmp_path / "frames") + "/")
    assert isinstance(folder, ImageSequenceSink) and folder.pattern.endswith("%06d.png")
    assert open_sink(str(tmp_path / "jpg" / "%04d.jpg")).pattern.endswith("%04d.jpg")
    assert open_sink(str(tmp_path / "single.png"), expected_frames=1).name.endswith("single.png")
    with pytest.raises(VideoSourceError, match="one image"):
        open_sink(str(tmp_path / "single.png"), expected_frames=5)
    with pytest.raises(VideoSourceError, match="Accepted outputs"):
        open_sink(str(tmp_path / "out.xyz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "jpg"]  # the aborted video left nothing


@pytest.mark.skipif(opencv_has_gui() and bool(os.environ.get("DISPLAY")), reason="a display is available here")
def test_window_without_gui_or_display_is_a_clear_error():
    with pytest.raises(VideoSourceError, match="window|display"):
        open_sink("display://")


def test_renderer_blends_palette_colours_in_bgr():
    frame = np.full((*FRAME_SIZE, 3), 100, dtype=np.uint8)
    class_map = np.zeros(FRAME_SIZE, dtype=np.uint8)
    class_map[:, 32:] = 2
    solid = OverlayRenderer(PALETTE, ["red", "green", "blue"], alpha=1.0).render(frame.copy(), class_map)
    assert solid[0, 0].tolist() == PALETTE[0][::-1] and solid[0, 40].tolist() == PALETTE[2][::-1]
    half = OverlayRenderer(PALETTE, ["red", "green", "blue"], alpha=0.5).render(frame.copy(), class_map)
    assert np.abs(half[0, 0].astype(int) - (np.array(PALETTE[0][::-1]) + 100) / 2).max() <= 1
    untouched = OverlayRenderer(PALETTE, ["red", "green", "blue"], alpha=0.0).render(frame.copy(), class_map)
    assert np.array_equal(untouched, frame)
    captioned = OverlayRenderer(PALETTE, ["r", "g", "b"], alpha=0.0).render(frame.copy(), class_map, fps=12.5)
    assert not np.array_equal(captioned, frame)


# -- the pipeline with fakes -------------------------------------------------------------------------------------------

def test_image_folder_to_image_folder_keeps_every_frame_and_its_colours(tmp_path):
    source_dir, out_dir = tmp_path / "in", tmp_path / "out"
    source_dir.mkdir()
    for index in range(6):
        cv2.imwrite(str(source_dir / f"{index:03d}.png"), colour_frame(index))
    pipeline = VideoPipeline(FakeSegmenter(), open_source(str(source_dir)), [open_sink(str(out_dir) + "/")],
                             alpha=1.0)
    summary = pipeline.run()
    written = sorted(out_dir.glob("*.png"))
    assert summary["frames"] == summary["frames_read"] == len(written) == 6
    for index, path in enumerate(written):
        pixel = cv2.imread(str(path))[2, FRAME_SIZE[1] // 2]  # top row: away from the FPS caption
        assert pixel.tolist() == PALETTE[index % 3][::-1], path.name


def test_file_pipeline_blocks_instead_of_dropping(tmp_path):
    slow = FakeSegmenter(delay_s=0.01)
    out = tmp_path / "out.mp4"
    summary = VideoPipeline(slow, open_source(str(write_video(tmp_path / "in.mp4", 20))), [open_sink(str(out))],
                            queue_size=1).run()
    assert summary["frames"] == 20 and summary["dropped"] == 0
    assert count_video_frames(out) == 20
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the private mode of the temporary file
    assert set(summary["stage_ms"]) == set(STAGES)
    stage = summary["stage_ms"]["infer"]
    assert stage["p50"] >= 10 and stage["p99"] >= stage["p50"]  # the model sleeps 10 ms per frame
    assert summary["stage_ms"]["e2e"]["p50"] >= summary["stage_ms"]["infer"]["p50"]


def test_live_source_drops_stale_frames_behind_a_slow_model():
    camera = FakeLiveSource(frames=150, interval_s=0.001)
    sink = ListSink()
    messages: list[str] = []
    summary = VideoPipeline(FakeSegmenter(delay_s=0.02), camera, [sink], reopen=None, log=quiet_log(messages)).run()
    assert summary["dropped"] > 0
    assert summary["frames"] < camera.produced == summary["frames_read"] == 150
    assert summary["frames"] + summary["dropped"] == camera.produced  # every frame is either shown or counted
    assert len(sink.frames) == summary["frames"] and sink.closed
    assert summary["ended_by"] == "stream-lost" and camera.closed


@pytest.mark.parametrize("silent_end", [False, True], ids=["raises", "stops-delivering"])
def test_broken_stream_backs_off_then_ends_cleanly_with_a_summary(silent_end):
    opened: list[float] = []

    def reopen():
        opened.append(time.perf_counter())
        raise VideoSourceError("connection refused")

    messages: list[str] = []
    policy = ReconnectPolicy(attempts=3, delay_s=0.02, max_delay_s=1.0)
    broke_at = time.perf_counter()
    sink = ListSink()
    summary = VideoPipeline(FakeSegmenter(), FakeLiveSource(4, silent_end=silent_end), [sink], reopen=reopen,
                            reconnect=policy,
                            log=quiet_log(messages)).run()
    assert summary["frames"] + summary["dropped"] == 4 and summary["frames"] >= 1
    assert summary["reconnect_attempts"] == 3 and summary["reconnects"] == 0
    assert summary["ended_by"] == "stream-lost" and not summary["interrupted"] and sink.closed
    # Each wait is at least twice the one before: 0.02, 0.04, 0.08 s.
    gaps = np.diff([broke_at, *opened])
    assert gaps[1] >= 0.04 * 0.95 and gaps[2] >= 0.08 * 0.95
    assert sum("attempt 1/3" in m for m in messages) == 1 and "giving up" in messages[-1]


def test_stream_that_comes_back_continues_and_counts_the_reconnect():
    sources = [FakeLiveSource(frames=3, interval_s=0.005), FakeLiveSource(frames=5, interval_s=0.005)]
    replacements = sources[1:]

    def reopen():
        if not replacements:
            raise VideoSourceError("stream gone for good")
        return replacements.pop(0)

    messages: list[str] = []
    summary = VideoPipeline(FakeSegmenter(), sources[0], [ListSink()], reopen=reopen,
                            reconnect=ReconnectPolicy(attempts=1, delay_s=0.2), log=quiet_log(messages)).run()
    assert summary["frames_read"] == 8 and summary["frames"] + summary["dropped"] == 8
    assert summary["reconnects"] == 1
    assert summary["stage_ms"]["decode"]["p99"] < 100  # the 200 ms back-off is not counted as decoding
    assert all(source.closed for source in sources)
    assert any("reconnected" in m for m in messages)


def test_failed_run_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "result.mp4"
    source = open_source(str(write_video(tmp_path / "in.mp4", 20)))
    with pytest.raises(RuntimeError, match="model crashed"):
        VideoPipeline(FakeSegmenter(fail_at=6), source, [open_sink(str(out))]).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # neither result.mp4 nor its temporary


def test_ctrl_c_stops_cleanly_and_finalises_the_output(tmp_path):
    out = tmp_path / "result.mp4"
    interrupter = ListSink(interrupt_at=5)
    source = open_source(str(write_video(tmp_path / "in.mp4", 20)))
    summary = VideoPipeline(FakeSegmenter(), source, [interrupter, open_sink(str(out))]).run()
    assert summary["interrupted"] and summary["ended_by"] == "interrupt"
    assert summary["frames"] == 4
    assert count_video_frames(out) == 4 and interrupter.closed and not interrupter.aborted
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def write_whole_and_cut_video(tmp_path: Path) -> tuple[Path, Path]:
    """A 20-frame MJPG file and a copy cut after half its bytes (its header still announces 20 frames)."""
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, FRAME_SIZE[::-1])
    noise = np.random.default_rng(0)
    for _ in range(20):
        writer.write(noise.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8))
    writer.release()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return whole, cut


def test_truncated_file_ends_with_a_warning(tmp_path):
    """A file cut short still gives the frames it has, and the run says how many the header promised."""
    _, cut = write_whole_and_cut_video(tmp_path)
    messages: list[str] = []
    summary = VideoPipeline(FakeSegmenter(), open_source(str(cut)), [ListSink()], log=quiet_log(messages)).run()
    assert 0 < summary["frames"] < 20 and summary["ended_by"] == "truncated"
    assert len(messages) == 1 and f"read {summary['frames']} of the 20 frames" in messages[0]


def test_max_frames_stops_early(tmp_path):
    out_dir = tmp_path / "frames"
    source = open_source(str(write_video(tmp_path / "in.mp4", 20)))
    summary = VideoPipeline(FakeSegmenter(), source, [open_sink(str(out_dir / "%03d.jpg"))], max_frames=5).run()
    assert summary["frames"] == 5 and summary["ended_by"] == "max-frames"
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{i:03d}.jpg" for i in range(5)]


def test_reconnect_delays_double_up_to_the_cap():
    policy = ReconnectPolicy(attempts=6, delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


# -- edgeseg video with the real Segmenter -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["static", "fused_dynamic"])
def test_cli_segments_a_video_into_a_file(tiny_onnx, tmp_path, capsys, model):
    video = write_video(tmp_path / "in.mp4", 20)
    out = tmp_path / "out.mp4"
    code = main(["video", str(getattr(tiny_onnx, model)), str(video), "--out", str(out), "--json", "--legend"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    summary = json.loads(lines[-1])
    for key in ("frames", "fps", "stage_ms", "dropped", "reconnects", "source", "output", "model", "backend"):
        assert key in summary, key
    assert summary["frames"] == 20 and summary["fps"] > 0 and summary["dropped"] == 0
    assert summary["backend"] == "onnxruntime" and summary["output"] == str(out)
    assert all(summary["stage_ms"][stage]["p50"] is not None for stage in STAGES)
    assert count_video_frames(out) == 20


def test_cli_single_image_gets_the_models_classes(tiny_onnx, tmp_path, capsys):
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[:32, :, 0] = 255  # red top half, blue bottom half
    rgb[32:, :, 2] = 255
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out.png"
    assert main(["video", str(tiny_onnx.static), str(image), "--out", str(out), "--alpha", "1"]) == 0
    assert "frames      1" in capsys.readouterr().out
    written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    expected = np.asarray(tiny_onnx.palette, dtype=np.uint8)[tiny_onnx.expected(rgb)]
    assert np.array_equal(written[:20], expected[:20])  # the top rows: the FPS caption sits at the bottom


def test_cli_reports_a_bad_source_as_one_line(tiny_onnx, tmp_path, capsys):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(os.urandom(2048))
    assert main(["video", str(tiny_onnx.static), str(bogus)]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("edgeseg video: error: cannot read") and "bogus.mp4" in error[-1]
    assert main(["video", str(tiny_onnx.static), "nope://x"]) == 1
    assert "unknown video source scheme" in capsys.readouterr().err


def test_cli_runs_a_video_without_torch(tiny_onnx, tmp_path):
    """The video command is what a Jetson image runs: no torch import may be attempted on its path, even caught."""
    video = write_video(tmp_path / "in.mp4", 5)
    script = f"""
import sys
attempts = []
class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            attempts.append(name)
            raise ImportError(name + " is blocked")
sys.meta_path.insert(0, RefuseTorch())
from edgeseg.cli import main
code = main(["video", {str(tiny_onnx.static)!r}, {str(video)!r}, "--out", {str(tmp_path / "out.mp4")!r}, "--json"])
assert code == 0 and not attempts, (code, attempts)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["frames"] == 5


def test_cli_exits_non_zero_on_a_truncated_file(tmp_path, tiny_onnx, capsys):
    whole, cut = write_whole_and_cut_video(tmp_path)
    assert main(["video", str(tiny_onnx.static), str(cut), "--json"]) == 1
    err = capsys.readouterr().err
    assert "edgeseg video: error:" in err and "ended before the frames it announces" in err
    assert main(["video", str(tiny_onnx.static), str(whole), "--json"]) == 0  # the whole file is a success


def test_first_open_of_a_live_source_is_retried_and_a_file_is_not():
    from edgeseg.runtime.video.pipeline import open_with_retry

    calls, waits, messages = [], [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise VideoSourceError("camera not ready")
        return "opened"

    policy = ReconnectPolicy(attempts=5, delay_s=0.1)
    assert open_with_retry(flaky, "rtsp://cam", True, policy, messages.append, wait=waits.append) == "opened"
    assert len(calls) == 3 and waits == [0.1, 0.2] and "attempt 2/5" in messages[-1]
    calls.clear()
    with pytest.raises(VideoSourceError):
        open_with_retry(flaky, "clip.mp4", False, policy, messages.append, wait=waits.append)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(VideoSourceError):  # a live source that never comes up fails after the policy's attempts
        open_with_retry(flaky, "rtsp://cam", True, ReconnectPolicy(attempts=1), messages.append, wait=waits.append)
    assert len(calls) == 2


def test_segment_video_is_the_library_form_of_the_command(tiny_onnx, tmp_path):
    from edgeseg.runtime.video import segment_video

    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((48, 64, 3), 40 * index, np.uint8))
    summary = segment_video(tiny_onnx.dynamic, str(frames), str(tmp_path / "out" / "%03d.png"), progress=False)
    assert summary["frames"] == 3 and summary["ended_by"] not in INCOMPLETE_ENDINGS
    assert len(list((tmp_path / "out").glob("*.png"))) == 3


def test_flicker_is_the_share_of_pixels_that_change_class_between_frames(tmp_path):
    """Five frames, red left of a boundary that moves 8 columns right each frame, blue right of it: each of the 4
    pairs turns 8 of 64 columns from blue to red (12.5% of the pixels); blue loses 1536 of its 6912 pixels."""
    (tmp_path / "in").mkdir()
    for index in range(5):
        frame = np.zeros((*FRAME_SIZE, 3), dtype=np.uint8)
        frame[:, : 16 + 8 * index, 2] = 255  # red (BGR)
        frame[:, 16 + 8 * index:, 0] = 255  # blue
        cv2.imwrite(str(tmp_path / "in" / f"{index}.png"), frame)
    summary = VideoPipeline(FakeSegmenter(input_size=FRAME_SIZE), open_source(str(tmp_path / "in"))).run()
    flicker = summary["flicker"]
    assert flicker["frame_pairs"] == 4 and flicker["overall"] == pytest.approx(0.125)
    assert flicker["per_class"] == {"red": 0.0, "green": None, "blue": pytest.approx(1536 / 6912)}
    table = format_summary(summary)
    assert "flicker" in table and "12.50%" in table and "22.22%" in table
    assert json.loads(json.dumps(summary))["flicker"]["overall"] == pytest.approx(0.125)

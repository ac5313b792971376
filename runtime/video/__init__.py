"""``edgeseg video``: segment a video file, camera, network stream or image folder, and time every stage.

Sources and outputs are named by URI, as in jetson-inference (see :data:`SOURCE_FORMS` and :data:`SINK_FORMS`);
:class:`VideoPipeline` overlaps decoding, inference and rendering in threads and reports p50/p99 per stage.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..arguments import add_model_arguments, backend_options, count_argument, fraction_argument, size_argument
from ..errors import ConfigError
from ..segmenter import Segmenter
from .pipeline import INCOMPLETE_ENDINGS, ReconnectPolicy, VideoPipeline, open_with_retry
from .render import OverlayRenderer
from .sinks import SINK_FORMS, DisplaySink, ImageSequenceSink, VideoFileSink, VideoSink, open_sink
from .sources import VideoSource, open_source
from .stats import STAGES, format_summary
from .uri import SOURCE_FORMS, SourceSpec, parse_source

__all__ = [
    "SINK_FORMS", "SOURCE_FORMS", "STAGES", "DisplaySink", "ImageSequenceSink", "OverlayRenderer", "ReconnectPolicy",
    "SourceSpec", "VideoFileSink", "VideoPipeline", "VideoSink", "VideoSource", "add_video_arguments",
    "format_summary", "open_sink", "open_source", "parse_source", "run_video", "segment_video",
]

_EXAMPLES = """\
examples:
  edgeseg video model.onnx road.mp4 --out road_seg.mp4 --legend
  edgeseg video model.onnx 0 --show                      # USB camera /dev/video0 in a window
  edgeseg video model.engine csi://0 --out frames/%06d.jpg
  edgeseg video model.onnx rtsp://10.0.0.5:8554/cam --gst --json"""


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"SOURCE forms:\n{SOURCE_FORMS}\n\n--out forms:\n{SINK_FORMS}\n\n{_EXAMPLES}"
    add_model_arguments(parser)
    parser.add_argument("source", help="video file, image folder, image, camera or stream (forms below)")
    parser.add_argument("--out", metavar="PATH", help="write the rendered frames here (forms below)")
    parser.add_argument("--show", action="store_true", help="show the rendered frames in a window (q or Esc stops)")
    parser.add_argument("--alpha", type=fraction_argument, default=0.5,
                        help="weight of the class colours (default: 0.5)")
    parser.add_argument("--legend", action="store_true", help="draw the names of the classes in view")
    parser.add_argument("--show-confidence", action="store_true",
                        help="tint pixels whose max softmax probability is below 0.5 (a logits model, or one exported "
                             "with --fuse post --confidence)")
    parser.add_argument("--max-frames", type=count_argument(1), metavar="N", help="stop after N frames")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")
    parser.add_argument("--size", type=size_argument, metavar="HxW",
                        help="network input size of a dynamic-size model (default: each frame's size rounded to a "
                             "multiple of 32)")
    parser.add_argument("--queue", type=count_argument(1), default=2, metavar="N",
                        help="frames waiting between stages for files (default: 2); live sources keep only the "
                             "newest frame and drop stale ones")
    parser.add_argument("--gst", action="store_true",
                        help="decode network streams with GStreamer (hardware decode where available) instead of "
                             "FFmpeg; needs OpenCV built with GStreamer")
    parser.add_argument("--reconnect", type=count_argument(0), default=5, metavar="N",
                        help="re-open a broken camera or stream up to N times in a row (default: 5; 0: never)")
    parser.add_argument("--reconnect-delay", type=float, default=0.5, metavar="S",
                        help="first wait before re-opening, doubled on each failed attempt up to 8 s (default: 0.5)")


def segment_video(model, source: str, out: str | None = None, *, backend: str = "auto", device: str = "auto",
                  size=None, alpha: float = 0.5, legend: bool = False, show_confidence: bool = False,
                  max_frames: int | None = None,
                  queue: int = 2, gst: bool = False, show: bool = False,
                  reconnect: ReconnectPolicy | None = None, progress: bool = True,
                  options: dict | None = None) -> dict:
    """Segment ``source`` (a URI, see :data:`SOURCE_FORMS`) with ``model`` into ``out``; returns the run's summary.

    The library form of ``edgeseg video``: the summary holds the frame counts, FPS, per-stage latencies and
    ``ended_by`` (see :data:`INCOMPLETE_ENDINGS` for the endings that mean the source was not read to its end).
    ``options`` are backend settings passed to :meth:`Segmenter.load`.
    """
    spec = parse_source(source)  # a typo in the source is reported before the model loads
    policy = reconnect or ReconnectPolicy()
    with Segmenter.load(model, backend=backend, device=device, size=size, **(options or {})) as segmenter:
        if show_confidence and segmenter.meta.fused_post and not segmenter.meta.confidence:
            raise ConfigError(f"{model} returns class ids only: --show-confidence needs a model exported with "
                              "--fuse post --confidence (or without --fuse)")
        opened = open_with_retry(lambda: open_source(spec, gst=gst), spec.uri or source, spec.is_live, policy,
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
        sinks: list[VideoSink] = []
        try:
            expected = max_frames
            if opened.frame_count is not None:
                expected = min(opened.frame_count, max_frames or opened.frame_count)
            if out:
                sinks.append(open_sink(out, fps=opened.fps, expected_frames=expected))
            if show and not any(isinstance(sink, DisplaySink) for sink in sinks):
                sinks.append(DisplaySink())
            pipeline = VideoPipeline(
                segmenter, opened, sinks,
                reopen=lambda: open_source(spec, gst=gst),
                alpha=alpha, legend=legend, show_confidence=show_confidence, max_frames=max_frames, queue_size=queue,
                reconnect=policy, progress=progress,
            )
        except BaseException:
            opened.close()
            for sink in sinks:
                sink.abort()
            raise
        return pipeline.run()


def run_video(args: argparse.Namespace) -> int:
    summary = segment_video(args.model, args.source, args.out, backend=args.backend, device=args.device,
                            size=args.size, alpha=args.alpha, legend=args.legend,
                            show_confidence=args.show_confidence, max_frames=args.max_frames,
                            queue=args.queue, gst=args.gst, show=args.show,
                            reconnect=ReconnectPolicy(attempts=args.reconnect, delay_s=args.reconnect_delay),
                            options=backend_options(args, "video"))
    print(json.dumps(summary) if args.json else format_summary(summary), flush=True)
    if summary["interrupted"]:
        return 130
    if summary["ended_by"] in INCOMPLETE_ENDINGS:
        print(f"edgeseg video: error: {summary['source']}: {INCOMPLETE_ENDINGS[summary['ended_by']]} "
              f"({summary['frames_read']} frames read)", file=sys.stderr)
        return 1
    return 0

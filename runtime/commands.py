"""``edgeseg eval`` and ``edgeseg bench``: score and time a deployed model without torch.

Both print a human table by default; with ``--json`` the last stdout line is one JSON object per result (bench:
one line per ``--size``), so scripts can parse it while progress bars go to stderr.
"""

from __future__ import annotations

import argparse
import json

from .arguments import add_model_arguments, backend_options, count_argument, size_argument
from .bench import DEFAULT_CAMERA_SIZE, benchmark, format_bench_table
from .atomic_files import write_json_atomic
from .metrics import format_iou_table
from .segmenter import Segmenter
from .sysinfo import describe_machine, format_machine


def _print_json_line(result: dict) -> None:
    print(json.dumps(result, sort_keys=False, default=str), flush=True)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, metavar="DATASET[:ROOT]",
                        help="dataset name and root, e.g. camvid:/data/camvid, cityscapes:/data/cityscapes, "
                             "folder:/data/mine; camvid alone is the embedded sample")
    parser.add_argument("--split", default="val", help="dataset split (default: val)")
    parser.add_argument("--batch", type=count_argument(1), default=1, help="images per network call (default: 1)")
    parser.add_argument("--limit", type=count_argument(1), help="score only the first N images")
    parser.add_argument("--size", type=size_argument, metavar="HxW",
                        help="network input size for a dynamic model (default: each image's size rounded to 32)")
    parser.add_argument("--save", metavar="PATH", help="also write the result as JSON to PATH")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")


def run_eval(args: argparse.Namespace) -> int:
    from . import open_dataset
    from .evaluate import evaluate

    dataset = open_dataset(args.data, args.split)
    with Segmenter.load(args.model, backend=args.backend, device=args.device, size=args.size,
                        **backend_options(args, "eval")) as segmenter:
        result = evaluate(segmenter, dataset, batch_size=args.batch, limit=args.limit)
    if args.save:
        write_json_atomic(args.save, result)
    if args.json:
        _print_json_line(result)
    else:
        print(f"{result['model']} on {result['dataset']} {args.split}: {result['images']} images in "
              f"{result['seconds']:.1f} s ({result['backend']}, {', '.join(result['providers'])}"
              + (f", computed in {result['compute_precision']})" if result["compute_precision"] else ")"))
        print(format_iou_table(result))
    return 0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--size", type=size_argument, nargs="+", metavar="HxW",
                        help="network input size(s), one result row each; a static model accepts only its own "
                             "(default: the model's size; a dynamic model runs at the camera size rounded to 32)")
    parser.add_argument("--batch", type=count_argument(1), default=1, help="images per network call (default: 1)")
    parser.add_argument("--warmup", type=count_argument(0), default=10,
                        help="untimed calls before timing (default: 10)")
    parser.add_argument("--iters", type=count_argument(1), default=100,
                        help="timed calls per measurement (default: 100)")
    parser.add_argument("--camera-size", type=size_argument, default=DEFAULT_CAMERA_SIZE, metavar="HxW",
                        help="frame size for the end-to-end measurement (default: 540x960)")
    parser.add_argument("--save", metavar="PATH", help="also write all result rows as a JSON list to PATH")
    parser.add_argument("--json", action="store_true",
                        help="print each result row as one JSON object per line (the last line is the last size)")


def run_bench(args: argparse.Namespace) -> int:
    sizes = args.size or [None]
    first = Segmenter.load(args.model, backend=args.backend, device=args.device, size=sizes[0],
                           **backend_options(args, "bench"))
    with first:
        # Every size is checked before any timing starts, so a refused size does not waste a long run.
        segmenters = [first] + [Segmenter(first.backend, size=size) for size in sizes[1:]]
        machine = describe_machine()
        rows = []
        for segmenter in segmenters:
            row = benchmark(segmenter, batch=args.batch, warmup=args.warmup, iters=args.iters,
                            camera_size=args.camera_size)
            rows.append({**row, "machine": machine})
    if args.save:
        write_json_atomic(args.save, rows)
    if args.json:
        for row in rows:
            _print_json_line(row)
    else:
        computed = first.backend.compute_precision
        print(f"{first.meta.model}: backend {first.backend.name}, device {first.backend.device}, providers "
              f"{', '.join(first.providers)}, precision {first.meta.precision}"
              + (f" (computed in {computed})" if computed else ""))
        print(format_machine(machine))
        print(format_bench_table(rows))
    return 0

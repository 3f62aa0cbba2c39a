"""`edgeface watch`: faces in a camera stream or a video file, tracked, gated and identified.

A thin shell over `edgeface.runtime.video.run` and `edgeface.runtime.watch.Watcher` (docs/watch.md).
Events are JSON lines on stdout (or --events FILE); the run's summary also goes to stderr as text.
"""

from __future__ import annotations

import click

from edgeface.cli.options import (
    Count,
    detector_option,
    no_refine_option,
    refine_setting,
    threads_option,
    threshold_option,
)
from edgeface.cli.quality_options import quality_options, thresholds_from_context
from edgeface.cli.runtime_cmd import artifact_option


@click.command("watch")
@artifact_option
@click.option("--camera", type=Count(0, 4095), default=None, help="Camera index (V4L2 /dev/videoN on Linux).")
@click.option("--video", type=click.Path(dir_okay=False), default=None, help="Video file to read.")
@click.option(
    "--gallery",
    "gallery_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite gallery to identify against (without it: tracks and quality only, no names).",
)
@threshold_option
@click.option(
    "--events", "events_path", default="-", show_default=True, help="JSON-lines events file, - = stdout."
)
@click.option(
    "--out-video",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write an annotated copy (.avi or .mkv: MJPG, .mp4: mp4v) with boxes, names, scores and fps.",
)
@click.option("--max-frames", type=Count(1), default=None, help="Stop after this many frames.")
@click.option(
    "--detect-every",
    type=Count(1, 10_000),
    default=5,
    show_default=True,
    help="Run the detector on every k-th frame; track with optical flow in between (1 = every frame).",
)
@click.option(
    "--min-views",
    type=Count(1, 10_000),
    default=2,
    show_default=True,
    help="Embedded views a track needs before it can be named.",
)
@click.option("--no-flow", is_flag=True, help="Keep boxes still between detections (no optical flow).")
@click.option(
    "--detect-side",
    type=Count(64, 8192),
    default=640,
    show_default=True,
    help="Frames larger than this are detected downscaled to it (cheaper on a Pi).",
)
@detector_option
@threads_option
@click.option("--flip", is_flag=True, help="Add the mirrored face's embedding (2x embed time).")
@no_refine_option
@click.option("--width", type=Count(16, 16384), default=None, help="Camera frame width to request.")
@click.option("--height", type=Count(16, 16384), default=None, help="Camera frame height to request.")
@quality_options
def watch_cmd(
    model: str,
    camera: int | None,
    video: str | None,
    gallery_path: str | None,
    threshold: float | None,
    events_path: str,
    out_video: str | None,
    max_frames: int | None,
    detect_every: int,
    min_views: int,
    no_flow: bool,
    detect_side: int,
    detector: str | None,
    threads: int | None,
    flip: bool,
    no_refine: bool,
    width: int | None,
    height: int | None,
) -> None:
    """Watch --camera N or --video FILE: one JSON line per event (track_start, identity, track_end), then
    a summary with fps and per-stage times. Ctrl-C (or SIGTERM) stops it cleanly; outputs stay complete."""
    from edgeface.errors import EdgefaceError
    from edgeface.io import check_output_file, printable
    from edgeface.runtime.backends import load_artifact
    from edgeface.runtime.detect import YuNetDetector
    from edgeface.runtime.gallery import Gallery, ModelTag
    from edgeface.runtime.pipeline import landmarker_for
    from edgeface.runtime.video import EventSink, VideoSource, run, summary_lines
    from edgeface.runtime.watch import WatchConfig, Watcher

    if (camera is None) == (video is None):
        raise EdgefaceError("give exactly one of --camera N or --video FILE")
    for out in (events_path if events_path != "-" else None, out_video):
        if out is not None:
            check_output_file(out)  # before anything slow is loaded
    quality = thresholds_from_context()
    refine = refine_setting(no_refine)
    config = WatchConfig(
        detect_every=detect_every,
        min_views=min_views,
        flow=not no_flow,
        refine_landmarks=refine is not False,
        flip=flip,
    )
    artifact = load_artifact(model, num_threads=threads)
    if threads:
        import cv2

        cv2.setNumThreads(threads)
    index = None
    if gallery_path is not None:
        with Gallery(gallery_path, readonly=True) as g:
            g.check_model(ModelTag.of(artifact.spec, model))
            index = g.matrix()
            if len(index.matrix) == 0:
                raise EdgefaceError(f"gallery {printable(g.path)} is empty; enroll someone first")
    watcher = Watcher(
        artifact,
        YuNetDetector(  # else the pack's
            detector or artifact.detector_path,
            max_side=detect_side,
            landmarker=landmarker_for(artifact, refine),
            threads=threads or 1,
        ),
        gallery=index,
        threshold=threshold,
        config=config,
        quality=quality,
    )
    source = VideoSource(camera=camera, video=video, width=width, height=height)
    sink = EventSink(events_path)
    try:
        summary = run(
            source,
            watcher,
            sink,
            video_out=out_video,
            max_frames=max_frames,
            warn=lambda m: click.echo(f"warning: {m}", err=True),
        )
    except BaseException:
        sink.discard()
        raise
    finally:
        source.close()
    sink.close()
    for line in summary_lines(summary):
        click.echo(line, err=True)

"""`edgeveil anonymize INPUT -o OUTPUT`: hide people, faces and text in a video, image, folder or stream."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import typer

from pipeline.vision.gate import DEFAULT_MAX_AGE

log = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    @app.command()
    def anonymize(
        input: str = typer.Argument(..., help="Video file, image, image folder, rtsp/http URL "
                                    "or camera index."),
        output: Path = typer.Option(..., "--output", "-o", help="Output video (.avi MJPG, "
                                    ".mkv lossless FFV1, .mp4 mp4v), image file, or folder for "
                                    "image inputs."),
        mode: str = typer.Option("blur", help="blur | pixelate | solid"),
        classes: str = typer.Option("person,head,face", help="Comma list of: face, person, "
                                    "head, text (plates)."),
        max_frames: int | None = typer.Option(None, "--max-frames", help="Stop after N frames."),
        target_fps: float | None = typer.Option(None, "--target-fps",
                                                help="Sample at most this many frames/s."),
        shape: str = typer.Option("rect", help="rect | ellipse"),
        on_failure: str = typer.Option("hide", "--on-failure",
                                       help="hide (fully anonymized frame) | drop (no frame)"),
        timeout: float = typer.Option(5.0, help="Seconds a detector may take per frame."),
        provider: list[str] | None = typer.Option(None, "--provider",
                                                  help="ONNX Runtime execution provider "
                                                  "(repeatable); default CPU."),
        threads: int | None = typer.Option(None, help="ONNX Runtime intra-op threads."),
        int8: bool | None = typer.Option(None, "--int8/--fp32", help="Person detector "
                                         "precision; default int8 on video (about 2x faster, "
                                         "same people found: docs/vision.md), fp32 on images."),
        motion_every: int = typer.Option(1, "--motion-every", min=1,
                                         help="Video: update the motion model on every N-th "
                                         "frame only (faster; measured cost in docs/vision.md)."),
        key_every: int = typer.Option(DEFAULT_MAX_AGE, "--key-every", min=1,
                                      help="Video: run the appearance person detector at least "
                                      "every N frames (first frame always); a frame it has not "
                                      "vouched for within N frames is released fully hidden."),
        progress: bool = typer.Option(True, help="Show a progress bar."),
    ) -> None:
        """Anonymize INPUT into OUTPUT and print a JSON summary.

        A video output keeps the input's frame count, order, size and fps: frame i of the
        output is frame i of the input (unless --on-failure drop or --target-fps is given).
        People are found by appearance (NanoDet) on the first frame and at least every
        --key-every frames, tracked in between, plus motion; faces by CenterFace; text by
        PP-OCR. Every image of a folder gets every detector.
        """
        from rich.progress import Progress

        from pipeline.exceptions import EdgeVeilError
        from pipeline.vision import (
            AnonymizeMode,
            FailClosedAnonymizer,
            ImageFolderSink,
            ImageFolderSource,
            ListSink,
            OnFailure,
            Shape,
            SourceError,
            VideoFileSink,
            default_detector,
            default_gate,
            default_policy,
            open_source,
            parse_classes,
            run,
        )

        try:
            amode = AnonymizeMode(mode.lower())
            ashape = Shape(shape.lower())
            fail = OnFailure(on_failure.lower())
            cls = parse_classes(classes)
            source = open_source(input, target_fps=target_fps, max_frames=max_frames)
            still = isinstance(source, ImageFolderSource)
            det = default_detector(cls, providers=provider or ("CPUExecutionProvider",),
                                   threads=threads, still_image=still, key_every=key_every,
                                   int8=int8, motion_every=motion_every)
        except (ValueError, SourceError, EdgeVeilError) as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from exc
        fc = FailClosedAnonymizer(det, policy=default_policy(amode, cls, ashape),
                                  timeout_s=timeout, on_failure=fail,
                                  gate=default_gate(cls, key_every=key_every))
        single_image = still and len(source.files) == 1 and output.suffix  # type: ignore[union-attr]
        if single_image:
            sink: ListSink | ImageFolderSink | VideoFileSink = ListSink()
        elif still:
            sink = ImageFolderSink(output)
        else:
            sink = VideoFileSink(output, fps=source.fps)
        total = max_frames if max_frames is not None else source.frame_count
        summary = None
        code = 0
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task("anonymizing", total=total)
            try:
                summary = run(source, fc, sink, input_name=input, output_name=str(output),
                              on_frame=lambda _f: bar.advance(task))
            except SourceError as exc:
                summary = getattr(exc, "summary", None)
                typer.secho(f"error: {exc}", fg="red", err=True)
                code = 1
        if single_image and isinstance(sink, ListSink) and sink.frames:
            output.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(output), sink.frames[0].image)
        if summary is not None:
            d = summary.to_dict()
            d["intervals"] = len(d["intervals"])
            typer.echo(json.dumps(d, indent=2))
        raise typer.Exit(code)

"""The browser demo behind `rrg serve MODEL` and a Hub Space's `app.py`: a Gradio page that writes a report.

A user uploads the views of one study (PNG, JPEG, 16-bit PNG or DICOM, read by `training.data.images.load_image`), may add
an indication, and presses *Generate*. The report streams in token by token (transformers' `TextIteratorStreamer`;
beam search cannot stream, so it shows the report when it is done), then the findings the rule-based CheXpert labeler
(`training.evaluation.labeler`) extracts appear as positive / negative / uncertain chips, and the attention heat map of each
sentence over the view the user picks is drawn by the analysis code (`training.analysis.attribution.token_attribution` on the
report shown, `plot_attribution`). Example studies from the synthetic benchmark, shipped with the package
(`training.serve.examples`), are one click away.

The model is loaded exactly as a Hub user loads it: `pipeline(model=NAME, trust_remote_code=True)` with an exported
folder or a Hub id (with `HF_HUB_OFFLINE=1` only the local cache is read). The report is the pipeline's own: its
`preprocess` builds the inputs, `model.generate` runs with the same arguments, its `postprocess` decodes, so the page
shows what `pipeline()` returns for the same image and settings.

Requests go through Gradio's queue, one generation at a time (the model and its attention switch are shared). A bad
upload (not an image, corrupt, too many views, too large) or a failed generation gives a message in the page, never a
stack trace, and the app keeps serving. Nothing but the local server is contacted: Gradio's analytics and share links
are off and the page uses system fonts.

Usage::

    rrg serve outputs/demo/export                     # http://127.0.0.1:7860
    rrg serve your-org/rrg-demo --port 8080           # a Hub id (from the cache when HF_HUB_OFFLINE=1)
    rrg serve outputs/demo/export --write-space space # a folder a Hugging Face Space runs as it is
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Before gradio is imported: no usage analytics or version checks leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .examples import NUM_EXAMPLES, write_examples

logger = logging.getLogger(__name__)

__all__ = [
    "BANNER",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MAX_UPLOAD_MB",
    "UploadError",
    "GenerationSettings",
    "ReportServer",
    "build_app",
    "launch",
    "build_parser",
    "main",
]

BANNER = (
    "**Research model — not for clinical use.** The reports are written by a machine-learning model for research and "
    "may be wrong or incomplete. Do not use them to diagnose or treat anyone, and do not upload identifiable patient "
    "data."
)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 20.0
# Pillow refuses larger images anyway (decompression-bomb guard); say it plainly before decoding.
MAX_PIXELS = 64_000_000
LABEL_NAMES = {1: "positive", 0: "negative", -1: "uncertain"}
CSS = """
.rrg-banner {border: 2px solid #b45309; background: #fffbeb; border-radius: 8px; padding: 4px 12px;}
.rrg-chip {display: inline-block; border-radius: 999px; padding: 2px 10px; margin: 2px; font-size: 0.9em;
           border: 1px solid;}
.rrg-chip.positive {background: #fee2e2; border-color: #dc2626; color: #7f1d1d;}
.rrg-chip.negative {background: #dcfce7; border-color: #16a34a; color: #14532d;}
.rrg-chip.uncertain {background: #fef9c3; border-color: #ca8a04; color: #713f12;}
.rrg-error {color: #b91c1c; font-weight: 600;}
"""


class UploadError(ValueError):
    """An upload the app cannot use; its message is shown in the page."""


@dataclass
class GenerationSettings:
    """The decoding settings of the page's "Advanced" fold, as `generate()` arguments."""

    decoding: str = "greedy"
    num_beams: int = 3
    max_new_tokens: int = 128
    repetition_penalty: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.decoding not in ("greedy", "beam"):
            raise UploadError(f"Decoding must be 'greedy' or 'beam', got {self.decoding!r}.")
        if int(self.max_new_tokens) < 1:
            raise UploadError(f"Max new tokens must be at least 1, got {self.max_new_tokens}.")
        if float(self.repetition_penalty) <= 0:
            raise UploadError(f"Repetition penalty must be positive, got {self.repetition_penalty}.")
        beams = int(self.num_beams) if self.decoding == "beam" else 1
        if beams < 1:
            raise UploadError(f"Beams must be at least 1, got {self.num_beams}.")
        return {"do_sample": False, "num_beams": beams, "max_new_tokens": int(self.max_new_tokens),
                "repetition_penalty": float(self.repetition_penalty)}


@dataclass
class _Study:
    """What one generation leaves for the heat-map view picker (kept per browser session in `gr.State`)."""

    attribution: dict | None = None
    names: list[str] = field(default_factory=list)


class ReportServer:
    r"""
    The model behind the page: loads it as a Hub user would, checks uploads, streams reports, labels them and draws
    attention heat maps. Usable without a browser (the page only calls these methods).

    Args:
        model (`str` or `os.PathLike`): An exported folder (`rrg export`) or a Hub model id.
        device (`str`, *optional*): Where the model runs (default: the pipeline's choice).
        max_upload_mb (`float`, *optional*, defaults to 20): Largest accepted file per view.

    Example:

    ```python
    >>> from training.serve import ReportServer
    >>> server = ReportServer("outputs/demo/export")
    >>> views = server.load_views(["frontal.png"])
    >>> *_, report = server.stream_report(views)
    ```
    """

    def __init__(self, model: str | os.PathLike, device: str | None = None, max_upload_mb: float = MAX_UPLOAD_MB):
        from transformers import pipeline

        from ..evaluation.labeler import RuleBasedLabeler

        self.name = str(model)
        if not Path(self.name).exists() and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", self.name):
            raise ValueError(f"{self.name} is neither a folder nor a Hub model id (org/name); serve an `rrg export` "
                             "folder (e.g. outputs/demo/export after `make demo`) or a Hub id.")
        kwargs = {"device": device} if device is not None else {}
        # Exactly what the model card tells a Hub user to run; the task comes from config.custom_pipelines.
        self.reporter = pipeline(model=self.name, trust_remote_code=True, **kwargs)
        if not hasattr(self.reporter, "_to_studies"):
            raise ValueError(
                f"{self.name} did not load the radiology-report-generation pipeline (got "
                f"{type(self.reporter).__name__}); serve an `rrg export` folder or a Hub id of one."
            )
        self.model = self.reporter.model.eval()
        self.processor = self.reporter.processor
        self.max_views = int(getattr(self.processor, "max_views", 1) or 1)
        self.max_upload_mb = float(max_upload_mb)
        self.labeler = RuleBasedLabeler()
        self.defaults = GenerationSettings(
            max_new_tokens=int(getattr(self.model.generation_config, "max_new_tokens", None) or 128)
        )
        # One generation at a time even outside Gradio's queue: the model's attention switch is shared.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------ input
    def load_views(self, files: Sequence | None) -> list:
        """Read uploaded files as 8-bit grayscale views; every problem is an `UploadError` naming the file."""
        from PIL import Image

        from ..data.images import load_image

        paths = [_path(f) for f in (files or [])]
        if not paths:
            raise UploadError("Upload at least one image of the study (PNG, JPEG, 16-bit PNG or DICOM).")
        if len(paths) > self.max_views:
            raise UploadError(
                f"Got {len(paths)} images but this model takes at most {self.max_views} view(s) per study; "
                "upload fewer."
            )
        views = []
        for path in map(Path, paths):
            size_mb = path.stat().st_size / 1e6 if path.is_file() else 0.0
            if size_mb > self.max_upload_mb:
                raise UploadError(f"{path.name} is {size_mb:.1f} MB; the limit is {self.max_upload_mb:g} MB per image.")
            try:
                previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
                try:
                    views.append(load_image(path))
                finally:
                    Image.MAX_IMAGE_PIXELS = previous
            except Image.DecompressionBombError:
                raise UploadError(f"{path.name} has too many pixels (limit {MAX_PIXELS:,}).") from None
            except Exception as err:  # any decoder failure is a bad upload, never a crash
                logger.info("Rejected upload %s: %s", path, err)
                raise UploadError(
                    f"{path.name} is not an image this app can read (PNG, JPEG, 16-bit PNG or DICOM): "
                    f"{_short(str(err).replace(str(path), path.name))}"  # no server paths in the page
                ) from None
        return views

    # ------------------------------------------------------------------------------------------- generation
    def stream_report(self, views: list, indication: str | None = None, settings: GenerationSettings | None = None,
                      record: dict | None = None) -> Iterator[str]:
        """
        Yield the report as it grows; the last value is the finished report, equal to what `pipeline()` returns for
        the same views, indication and settings. A `record` dict, if given, receives the token ids (`prompt_ids`,
        `report_ids`) that [`~ReportServer.attribution`] needs.
        """
        from transformers import TextIteratorStreamer

        generate_kwargs = (settings or self.defaults).generate_kwargs()
        indication = (indication or "").strip() or None
        with self._lock:
            inputs = self.reporter.preprocess({"images": views, "indication": indication})
            inputs = inputs.to(self.model.device)
            prompt_length = inputs["input_ids"].shape[1]
            streamer = None
            if generate_kwargs["num_beams"] == 1:  # transformers streams only single-sequence decoding
                streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            result: dict = {}

            def run():
                try:
                    result["sequences"] = self.model.generate(**inputs, **generate_kwargs, streamer=streamer)
                except BaseException as err:  # re-raised in the caller's thread
                    result["error"] = err
                    if streamer is not None:
                        streamer.end()

            worker = threading.Thread(target=run, name="rrg-generate", daemon=True)
            worker.start()
            try:
                if streamer is not None:
                    text = ""
                    for piece in streamer:
                        text += piece
                        yield text.strip()
            finally:
                # Also when the page went away mid-report: the lock is held until this generation is over.
                worker.join()
            if "error" in result:
                raise result["error"]
            sequences = result["sequences"].cpu()
            report = self.reporter.postprocess({"sequences": sequences, "prompt_length": prompt_length})["report"]
        if record is not None:
            record.update(
                prompt_ids=inputs["input_ids"][0][inputs["attention_mask"][0].bool()].tolist(),
                report_ids=self._report_ids(sequences[0, prompt_length:].tolist()),
                report=report, views=views, id="upload",
            )
        yield report

    def _report_ids(self, generated: list[int]) -> list[int]:
        """The generated ids up to and including the first EOS (beam search pads finished beams after it)."""
        eos = self.model.generation_config.eos_token_id
        eos = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        for index, token in enumerate(generated):
            if token in eos:
                return generated[: index + 1]
        return generated

    def label(self, report: str) -> dict[str, int]:
        """The labeler's findings that the report mentions: observation -> 1 / 0 / -1."""
        return {name: value for name, value in self.labeler.label(report).items() if value is not None}

    def attribution(self, record: dict) -> dict | None:
        """
        Per-sentence attention maps over each view for the report shown: the analysis code's `token_attribution`,
        teacher-forced on the very tokens of `record` (filled by [`~ReportServer.stream_report`]). `None` when the
        report is empty.
        """
        from ..analysis.attribution import token_attribution

        eos = self.model.generation_config.eos_token_id
        eos = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        if not [token for token in record["report_ids"] if token not in eos]:
            return None
        with self._lock:
            return token_attribution(self.model, self.processor, None, record=record)

    @staticmethod
    def heatmap(attribution: dict, view: int, path: str | os.PathLike) -> Path:
        """Draw the heat maps of each sentence over one view (`training.analysis.plots.plot_attribution`)."""
        from ..analysis.plots import plot_attribution

        return plot_attribution(attribution, path, views=[view])

    @classmethod
    def heatmap_image(cls, attribution: dict, view: int):
        """[`~ReportServer.heatmap`] as a PIL image (the page hands it to Gradio, whose cache is cleaned)."""
        from PIL import Image

        with tempfile.TemporaryDirectory(prefix="rrg-heatmap-") as folder:
            with Image.open(cls.heatmap(attribution, view, Path(folder) / "heatmap.png")) as image:
                return image.convert("RGB")


def _path(file) -> str:
    """A path from what Gradio hands over (a path string, or a tempfile-like object with `.name`)."""
    return os.fspath(file) if isinstance(file, (str, os.PathLike)) else str(getattr(file, "name", file))


def _short(err: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def chips_html(labels: dict[str, int]) -> str:
    """Positive / negative / uncertain chips for the labeler's findings (positives first)."""
    if not labels:
        return "<div class='rrg-chips'><em>The labeler found no CheXpert observation in the report.</em></div>"
    order = {1: 0, -1: 1, 0: 2}
    chips = [
        f"<span class='rrg-chip {LABEL_NAMES[value]}' data-label='{LABEL_NAMES[value]}' "
        f"title='{LABEL_NAMES[value]}'>{html.escape(name)}: {LABEL_NAMES[value]}</span>"
        for name, value in sorted(labels.items(), key=lambda item: (order[item[1]], item[0]))
    ]
    return "<div class='rrg-chips'>" + "".join(chips) + "</div>"


def _error_html(message: str) -> str:
    return f"<div class='rrg-error' role='alert'>{html.escape(message)}</div>"


# -------------------------------------------------------------------------------------------------- page
def _theme():
    import gradio as gr

    # System fonts: the default theme would fetch web fonts from the internet.
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_app(server: ReportServer, examples_dir: str | os.PathLike | None = None, max_examples: int = NUM_EXAMPLES):
    """
    The Gradio page for `server`.

    Args:
        server ([`ReportServer`]): The loaded model.
        examples_dir (`str` or `os.PathLike`, *optional*): Where the example studies are rendered (default: a
            temporary folder).
        max_examples (`int`, *optional*, defaults to 3): Shipped synthetic test studies offered as examples (0: none).

    Returns:
        `gradio.Blocks`
    """
    import gradio as gr

    examples_dir = Path(examples_dir) if examples_dir else Path(tempfile.mkdtemp(prefix="rrg-serve-examples-"))
    examples = write_examples(examples_dir, count=max_examples, lateral=server.max_views > 1) if max_examples else []
    defaults = server.defaults

    # delete_cache: uploads and heat maps older than an hour are removed hourly (a Space runs for weeks).
    with gr.Blocks(title="rrg: chest X-ray report generation", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown("# Chest X-ray report generation", elem_id="rrg-title")
        gr.Markdown(BANNER, elem_id="rrg-banner", elem_classes=["rrg-banner"])
        gr.Markdown(f"Model: `{server.name}` — up to {server.max_views} view(s) per study, "
                    f"{server.max_upload_mb:g} MB per image.", elem_id="rrg-model")
        state = gr.State(_Study())
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label="Views of one study (PNG, JPEG, 16-bit PNG, DICOM)", file_count="multiple",
                                type="filepath", elem_id="rrg-files")
                indication = gr.Textbox(label="Indication (optional)", placeholder="e.g. Cough and fever.",
                                        lines=1, elem_id="rrg-indication")
                with gr.Accordion("Advanced", open=False, elem_id="rrg-advanced"):
                    decoding = gr.Radio(["greedy", "beam"], value=defaults.decoding, label="Decoding",
                                        elem_id="rrg-decoding")
                    num_beams = gr.Slider(1, 8, value=defaults.num_beams, step=1, label="Beams (beam search)",
                                          elem_id="rrg-beams")
                    max_new_tokens = gr.Slider(1, 512, value=defaults.max_new_tokens, step=1, label="Max new tokens",
                                               elem_id="rrg-max-new-tokens")
                    repetition_penalty = gr.Slider(1.0, 2.0, value=defaults.repetition_penalty, step=0.05,
                                                   label="Repetition penalty", elem_id="rrg-repetition-penalty")
                generate = gr.Button("Generate report", variant="primary", elem_id="rrg-generate")
                if examples:
                    gr.Examples(
                        examples=[[study["images"], study["indication"]] for study in examples],
                        example_labels=[f"Synthetic study {study['id']}" for study in examples],
                        inputs=[files, indication], label="Example studies (synthetic benchmark, test split)",
                        elem_id="rrg-examples",
                    )
            with gr.Column(scale=1):
                status = gr.HTML("", elem_id="rrg-status")
                report = gr.Textbox(label="Report", lines=8, interactive=False, elem_id="rrg-report")
                chips = gr.HTML("", label="Findings", elem_id="rrg-findings")
                view = gr.Radio([], label="Heat map over view", elem_id="rrg-view", visible=False)
                gr.Markdown("Attention of each sentence of the report to the chosen view (LLM layers averaged):")
                # No label badge: it would be drawn over the figure's own title.
                heatmap = gr.Image(type="pil", format="png", show_label=False, interactive=False,
                                   elem_id="rrg-heatmap")

        def run(files_value, indication_value, decoding_value, beams_value, tokens_value, penalty_value):
            empty = _Study()
            try:
                views = server.load_views(files_value)
                settings = GenerationSettings(decoding_value, beams_value, tokens_value, penalty_value)
                text, record = "", {}
                yield ("<div class='rrg-running'>Writing the report…</div>", "", "", gr.update(visible=False),
                       None, empty)
                for text in server.stream_report(views, indication_value, settings, record=record):
                    yield gr.update(), text, gr.update(), gr.update(), gr.update(), gr.update()
                labels = server.label(text)
                yield ("<div class='rrg-done'>Report written; drawing the attention maps…</div>", text,
                       chips_html(labels), gr.update(), gr.update(), gr.update())
                try:
                    attribution = server.attribution(record)
                except Exception as err:  # keep the report on the page; say why the map is missing
                    logger.exception("Attention map failed")
                    yield (_error_html(f"Report written, but no attention map: {_short(err)}"), text,
                           chips_html(labels), gr.update(visible=False), None, empty)
                    return
                if attribution is None:
                    yield ("<div class='rrg-done'>Done (empty report: no attention map).</div>", text,
                           chips_html(labels), gr.update(visible=False), None, empty)
                    return
                names = [f"{index}: {Path(_path(f)).name}" for index, f in enumerate(files_value)]
                study = _Study(attribution=attribution, names=names)
                yield ("<div class='rrg-done'>Done.</div>", text, chips_html(labels),
                       gr.update(choices=names, value=names[0], visible=True), server.heatmap_image(attribution, 0),
                       study)
            except UploadError as err:
                yield _error_html(str(err)), "", "", gr.update(visible=False), None, empty
            except Exception as err:  # the page shows a message; the log keeps the traceback
                logger.exception("Generation failed")
                yield (_error_html(f"Generation failed ({type(err).__name__}): {_short(err)}"), "", "",
                       gr.update(visible=False), None, empty)

        def pick_view(name, study):
            if study is None or study.attribution is None or name not in study.names:
                return gr.update()
            index = study.names.index(name)
            try:
                return server.heatmap_image(study.attribution, index)
            except Exception as err:
                logger.exception("Heat map failed")
                raise gr.Error(f"Could not draw the heat map: {_short(err)}") from None

        generate.click(
            run, inputs=[files, indication, decoding, num_beams, max_new_tokens, repetition_penalty],
            outputs=[status, report, chips, view, heatmap, state], concurrency_limit=1,
            show_progress="minimal",
        )
        view.change(pick_view, inputs=[view, state], outputs=[heatmap], concurrency_limit=1)
    return app


def launch(model: str | os.PathLike, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT,
           max_upload_mb: float = MAX_UPLOAD_MB, queue_size: int = 64, block: bool = True, device: str | None = None,
           examples: int = NUM_EXAMPLES):
    """
    Load `model` and serve the page on `host:port` (no share link). Returns `(app, url)`; with `block=True` it
    serves until interrupted.
    """

    server = ReportServer(model, device=device, max_upload_mb=max_upload_mb)
    app = build_app(server, max_examples=examples)
    # Requests beyond one generation wait in the queue; more than queue_size waiting are refused with a message.
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    _, url, _ = app.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=True,
        show_error=False, ssr_mode=False, theme=_theme(), css=CSS, footer_links=[],
        # Gradio's own guard, above ours so our message (with the limit) is the one users see.
        max_file_size=f"{int(max_upload_mb * 4)}mb", mcp_server=False,
    )
    logger.info("Serving %s at %s", model, url)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return app, url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrg serve",
        description="Serve a browser demo of a trained model (an `rrg export` folder or a Hub id).",
    )
    parser.add_argument("model", help="Exported folder (e.g. outputs/demo/export) or Hub model id (org/name).")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"Interface to bind (default {DEFAULT_HOST}; 0.0.0.0 serves the whole network).")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"Port (default {DEFAULT_PORT}).")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="Largest image file accepted.")
    parser.add_argument("--device", help="Device for the model (cpu, cuda, ...); default: the pipeline's choice.")
    parser.add_argument("--examples", type=int, default=NUM_EXAMPLES, help="Synthetic example studies shown.")
    parser.add_argument("--write-space", metavar="DIR",
                        help="Instead of serving, write a Hugging Face Space folder for MODEL (a Hub id) into DIR.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.write_space:
        from .space import write_space

        try:
            folder = write_space(args.model, args.write_space)
        except ValueError as err:
            logger.error("%s", err)
            return 2
        sys.stdout.write(f"{folder}\n")
        return 0
    try:
        launch(args.model, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, device=args.device,
               examples=args.examples)
    except (OSError, ValueError) as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        pass
    return 0

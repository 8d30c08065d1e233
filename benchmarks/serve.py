"""`rrg serve` latency on the demo-size architecture (part of `make benchmark`; see benchmarks/run.py).

Measures, for one single-view study and a 64-token report: the time to the first streamed token and to the whole
streamed report (`ReportServer.stream_report`, what the page shows) against `pipeline()` on the same folder, the
attention map that follows the report, and the whole round trip through the running Gradio app's queue over HTTP
(localhost only).
"""

import shutil
import socket
import time
from pathlib import Path


def _save_servable(model, processor, folder: Path) -> Path:
    """A folder `pipeline(model=..., trust_remote_code=True)` loads, as `rrg export` writes it (no run summary)."""
    import modeling_rrg
    from modeling_rrg.pipeline_rrg import custom_pipelines_entry

    model.config.custom_pipelines = custom_pipelines_entry()
    # A fixed report length, so every measurement generates the same 64 tokens.
    model.generation_config.min_new_tokens = 64
    model.generation_config.max_new_tokens = 64
    model.generation_config.suppress_tokens = [int(model.config.image_token_id)]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    shutil.copy2(Path(modeling_rrg.__file__).with_name("pipeline_rrg.py"), folder / "pipeline_rrg.py")
    return folder


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bench_serve(tmp: Path, model, processor, repeat: int = 3) -> dict:
    from PIL import Image

    from training.sandbox.synthetic import generate_study
    from training.serve import ReportServer, launch

    folder = _save_servable(model, processor, tmp / "servable")
    _, images = generate_study(0, "test", 0, image_size=128)
    image = tmp / "study.png"
    Image.fromarray(images[0]).save(image)
    server = ReportServer(folder)
    views = server.load_views([image])

    first, whole, attribution = [], [], []
    for _ in range(repeat):
        record = {}
        start = time.perf_counter()
        stream = server.stream_report(views, record=record)
        next(stream)
        first.append(time.perf_counter() - start)
        *_, report = stream
        whole.append(time.perf_counter() - start)
        start = time.perf_counter()
        server.heatmap_image(server.attribution(record), 0)
        attribution.append(time.perf_counter() - start)
    pipeline_s = []
    for _ in range(repeat):
        start = time.perf_counter()
        assert server.reporter(str(image))["report"] == report
        pipeline_s.append(time.perf_counter() - start)

    from gradio_client import Client, handle_file

    app, url = launch(folder, port=_free_port(), block=False, examples=0)
    try:
        client = Client(url, verbose=False)
        page = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = client.predict([handle_file(str(image))], "", "greedy", 3, 64, 1.0, api_name="/run")
            page.append(time.perf_counter() - start)
            assert result[1] == report
    finally:
        app.close()
    return {
        "serve_first_token_s": round(min(first), 3),
        "serve_stream_64_tokens_s": round(min(whole), 3),
        "pipeline_64_tokens_s": round(min(pipeline_s), 3),
        "serve_stream_vs_pipeline_speed": round(min(pipeline_s) / min(whole), 2),
        "serve_attention_map_s": round(min(attribution), 3),
        "serve_page_round_trip_s": round(min(page), 3),
    }

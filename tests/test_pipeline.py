"""The `radiology-report-generation` pipeline (one image, views of a study, paths, batches, indications, clear errors)
and the standard `image-text-to-text` pipeline with the saved chat template, in-process and from a fresh process
where the project is not importable."""

import json

import pytest
import torch
from PIL import Image

from helpers import run_isolated, xray


@pytest.fixture(scope="module")
def reporter():
    from transformers import pipeline

    import modeling_rrg.pipeline_rrg  # noqa: F401  registers the task
    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model()
    return pipeline("radiology-report-generation", model=model.eval(), processor=processor, max_new_tokens=6)


def _direct(reporter, views, indication=None, **generate_kwargs):
    batch = reporter.processor(images=[views], indication=indication)
    with torch.no_grad():
        out = reporter.model.generate(**batch, max_new_tokens=6, **generate_kwargs)
    return reporter.processor.batch_decode(out[:, batch["input_ids"].shape[1]:])[0]


def test_single_image_views_and_paths(reporter, tmp_path):
    one = reporter(xray(0))
    assert set(one) == {"report"} and one["report"] == _direct(reporter, [xray(0)])
    views = reporter([xray(0), xray(1)], indication="Cough.")
    assert views["report"] == _direct(reporter, [xray(0), xray(1)], indication="Cough.")
    Image.fromarray(xray(0)).save(tmp_path / "frontal.png")
    assert reporter(str(tmp_path / "frontal.png")) == reporter(tmp_path / "frontal.png") == one
    assert reporter(Image.fromarray(xray(0)))["report"] == one["report"]


def test_batch_inputs(reporter):
    studies = [[xray(0), xray(1)], [xray(2)], [xray(3)]]
    out = reporter(studies, indication=["Cough.", None, "Fever."])
    assert isinstance(out, list) and len(out) == 3
    assert out[0]["report"] == _direct(reporter, studies[0], "Cough.")
    assert out[1]["report"] == _direct(reporter, studies[1])
    dicts = reporter([{"images": xray(2)}, {"images": [xray(3)], "indication": "Fever."}])
    assert [d["report"] for d in dicts] == [out[1]["report"], out[2]["report"]]
    assert reporter([[xray(0)]]) == [reporter(xray(0))]  # a batch of one stays a list


def test_indication_and_generation_arguments_reach_the_model(reporter):
    inputs = reporter.preprocess({"images": [xray(0)], "indication": "Chest pain."})
    assert "Indication: Chest pain." in reporter.processor.tokenizer.decode(inputs["input_ids"][0])
    longer = reporter(xray(0), max_new_tokens=12)
    assert len(reporter.processor.tokenizer(longer["report"])["input_ids"]) > 0
    beams = reporter(xray(0), num_beams=2)
    assert beams["report"] == _direct(reporter, [xray(0)], num_beams=2)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (42, TypeError, "Unsupported input of type int"),
        ("no-such-file.png", FileNotFoundError, "no-such-file.png"),
        ([], ValueError, "empty"),
        ([xray(0), [xray(1)]], TypeError, "mix"),
        ([xray(0), xray(1), xray(2)], ValueError, "at most 2"),
        ({"image": xray(0)}, ValueError, "'images'"),
        ({"images": []}, TypeError, "non-empty"),
        ({"images": xray(0), "indication": 3}, TypeError, "indication"),
    ],
)
def test_unsupported_input_errors_clearly(reporter, bad, error, match):
    with pytest.raises(error, match=match):
        reporter(bad)


def test_indication_count_must_match_the_batch(reporter):
    with pytest.raises(ValueError, match="2 indications for 3 studies"):
        reporter([[xray(0)], [xray(1)], [xray(2)]], indication=["a", "b"])
    with pytest.raises(ValueError, match="one per study"):
        reporter(xray(0), indication=["a"])


def test_image_text_to_text_pipeline_leaves_training_padding_as_configured(tokenizer):
    """The image-text-to-text pipeline switches the shared tokenizer to left padding for batched generation; the same
    processor used for training afterwards still right-pads (labels at the start of each row), as it did before."""
    import copy

    from transformers import pipeline

    from training.sandbox.tiny import build_tiny_model

    model, processor = build_tiny_model(tokenizer=copy.deepcopy(tokenizer))  # the session tokenizer stays untouched
    reports = ["Normal heart.", "Moderate left pleural effusion with basal atelectasis."]
    studies = [[xray(0)], [xray(1), xray(2)]]
    before = processor(images=studies, report=reports)
    assert processor.tokenizer.padding_side == "right" and before["attention_mask"][0, -1] == 0  # right-padded

    pipe = pipeline("image-text-to-text", model=model.eval(), processor=processor)
    assert processor.tokenizer.padding_side == "left"  # what the pipeline does (transformers 5.25)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.fromarray(xray(0))},
                                             {"type": "text", "text": processor.instruction}]}]
    generated = pipe(text=messages, return_full_text=False, max_new_tokens=4)[0]["generated_text"]
    inputs = processor(images=[[xray(0)]])
    with torch.no_grad():
        direct = processor.batch_decode(model.generate(**inputs, max_new_tokens=4)[:, inputs["input_ids"].shape[1]:])[0]
    assert generated == direct

    after = processor(images=studies, report=reports)
    for key in before:
        assert torch.equal(after[key], before[key]), f"{key} is padded differently after the pipeline ran"
    # trl's vision collator calls the processor this way (no padding_side) for standard datasets
    texts = [processor.build_prompt(len(views)) + " " + report for views, report in zip(studies, reports)]
    collated = processor(images=studies, text=texts, padding=True, return_tensors="pt")
    assert collated["attention_mask"][0, -1] == 0 and collated["attention_mask"][0, 0] == 1
    # batched generation still pads left when asked
    assert processor(images=studies, padding_side="left")["attention_mask"][0, 0] == 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from helpers import make_full_run
    from training.release.export import export_model
    from training.sandbox.tiny import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("pipe")
    run = make_full_run(root / "stage1", train_bpe_tokenizer())
    out = export_model(run, root / "export", repo_id="rrg-org/rrg-tiny", max_new_tokens=8)
    for index, name in enumerate(("frontal.png", "lateral.png", "other.png")):
        Image.fromarray(xray(index)).save(root / name)
    return out


def test_multimodal_lm_auto_class_loads_the_export(exported):
    """transformers 5.25's `AutoModelForMultimodalLM` (the Hub's generated snippets use it) loads an export to the same
    model as `AutoModelForImageTextToText` (here through the local registration; as remote code in a fresh process
    below and in tests/test_remote_code_compat.py)."""
    import transformers
    from packaging.version import Version
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_rrg import RRGForConditionalGeneration

    auto_map = json.loads((exported / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForMultimodalLM"] == auto_map["AutoModelForImageTextToText"] == (
        "modeling_rrg.RRGForConditionalGeneration")
    multimodal = getattr(transformers, "AutoModelForMultimodalLM", None)
    if multimodal is None:
        assert Version(transformers.__version__) < Version("5.25"), "transformers 5.25+ has AutoModelForMultimodalLM"
        pytest.skip(f"transformers {transformers.__version__} has no AutoModelForMultimodalLM")
    reference = AutoModelForImageTextToText.from_pretrained(exported).eval()
    local = multimodal.from_pretrained(exported).eval()  # modeling_rrg is importable here: registered for the class
    assert type(local) is RRGForConditionalGeneration
    processor = AutoProcessor.from_pretrained(exported)
    batch = processor(images=[[xray(0)], [xray(1), xray(2)]], padding_side="left")
    with torch.no_grad():
        torch.testing.assert_close(local(**batch).logits, reference(**batch).logits)


FRESH_PIPELINES = """
import json
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
name = {name!r}
# The custom task is found from config.custom_pipelines, with or without naming it.
reporter = pipeline(model=name, trust_remote_code=True)
assert type(reporter).__name__ == "RadiologyReportGenerationPipeline", type(reporter)
assert type(reporter).__module__.startswith("transformers_modules"), type(reporter).__module__
named = pipeline("radiology-report-generation", model=name, trust_remote_code=True)
one = reporter("frontal.png")
views = reporter(["frontal.png", "lateral.png"], indication="Cough.")
batch = reporter([["frontal.png", "lateral.png"], ["other.png"]], indication=["Cough.", None])
assert batch[0] == views and named("frontal.png") == one, (batch, views)
# Same text as generate() + batch_decode.
model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(name, trust_remote_code=True)
inputs = processor(images=[Image.open("frontal.png")])
direct = processor.batch_decode(model.generate(**inputs)[:, inputs["input_ids"].shape[1]:])[0]
assert one == {{"report": direct}}, (one, direct)
try:
    reporter(3.5)
except TypeError as err:
    assert "Unsupported input" in str(err)
else:
    raise SystemExit("no error for a float input")
# The standard image-text-to-text pipeline renders the saved chat template into the same prompt.
pipe = pipeline("image-text-to-text", model=name, trust_remote_code=True)
instruction = processor.instruction
messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.open("frontal.png")}},
                                          {{"type": "text", "text": instruction}}]}}]
out = pipe(text=messages, return_full_text=False)
assert out[0]["generated_text"] == direct, (out, direct)
import transformers
if hasattr(transformers, "AutoModelForMultimodalLM"):  # 5.25+: what the Hub's generated snippets load
    multimodal = transformers.AutoModelForMultimodalLM.from_pretrained(name, trust_remote_code=True)
    again = processor.batch_decode(multimodal.generate(**inputs)[:, inputs["input_ids"].shape[1]:])[0]
    assert again == direct, (again, direct)
two = pipe(text=[messages, messages], return_full_text=False)
assert [o[0]["generated_text"] for o in two] == [direct, direct], two
print(json.dumps({{"one": one, "batch": batch, "itt": out[0]["generated_text"]}}))
"""


@pytest.mark.slow  # a fresh Python process loads torch and transformers again
def test_both_pipelines_from_a_fresh_process(exported):
    out = run_isolated(FRESH_PIPELINES.format(name=str(exported)), cwd=exported.parent,
                       env_extra={"HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["batch"]) == 2 and all(set(r) == {"report"} for r in result["batch"])

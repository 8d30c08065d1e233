"""The processor: images in every form, prompt formatting, labels, truncation, decoding, chat template."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import xray
from modeling_rrg.processing_rrg import DEFAULT_INSTRUCTION, to_pil_image


def test_grayscale_and_16bit_images_are_scaled_correctly(tmp_path):
    gray = xray(0)
    pil = to_pil_image(gray)
    assert pil.mode == "RGB"
    assert np.array_equal(np.asarray(pil)[..., 0], gray)  # 8-bit grayscale keeps its values

    deep = np.linspace(1000, 3000, 64 * 64).reshape(64, 64).astype(np.uint16)  # 12-bit data in 16-bit container
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    assert Image.open(path).mode.startswith("I")
    scaled = np.asarray(to_pil_image(path))[..., 0]
    assert scaled.min() == 0 and scaled.max() == 255  # full 8-bit range, not a dark image
    assert np.all(np.diff(scaled.reshape(-1).astype(int)) >= 0)  # monotonic mapping

    floats = np.full((8, 8), 0.5, dtype=np.float32)
    assert np.asarray(to_pil_image(floats))[0, 0, 0] == 128
    chw = torch.rand(3, 10, 12)
    assert to_pil_image(chw).size == (12, 10)


def test_bad_images_are_clear_errors(tmp_path, tiny):
    _, processor = tiny
    with pytest.raises(FileNotFoundError, match="missing.png"):
        to_pil_image(tmp_path / "missing.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        to_pil_image(bad)
    with pytest.raises(ValueError, match="shape"):
        to_pil_image(np.zeros((4, 4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match="Unsupported image mode 'HSV'"):
        to_pil_image(Image.new("HSV", (8, 8)))
    with pytest.raises(TypeError, match="Unsupported image type"):
        to_pil_image({"not": "an image"})
    with pytest.raises(ValueError, match="empty image list"):
        processor(images=[])
    with pytest.raises(ValueError, match="Study 1 has an empty image list"):
        processor(images=[[xray(0)], []])
    with pytest.raises(ValueError, match="3 views but the model takes at most max_views=2"):
        processor(images=[[xray(0), xray(1), xray(2)]])


def test_image_token_missing_from_text_is_an_error(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match="0 '<image>' placeholder\\(s\\) but its study has 1 image"):
        processor(images=[xray(0)], text="Describe this X-ray.")


def test_paths_numpy_and_pil_give_the_same_pixels(tmp_path, tiny):
    _, processor = tiny
    array = xray(3, size=50)
    path = tmp_path / "a.png"
    Image.fromarray(array).save(path)
    from_path = processor(images=[str(path)])["pixel_values"]
    from_array = processor(images=[array])["pixel_values"]
    from_pil = processor(images=[Image.fromarray(array)])["pixel_values"]
    assert from_path.shape == (1, 1, 3, 32, 32)
    torch.testing.assert_close(from_path, from_array)
    torch.testing.assert_close(from_path, from_pil)


def test_default_prompt_expands_one_block_per_view(tiny):
    model, processor = tiny
    batch = processor(images=[[xray(0), xray(1)], [xray(2)]])
    n = processor.image_seq_length
    counts = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert counts == [2 * n, n]
    assert batch["num_views"].tolist() == [2, 1]
    assert batch["pixel_values"].shape[:2] == (2, 2)
    assert torch.count_nonzero(batch["pixel_values"][1, 1]) == 0  # padded view
    text = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert DEFAULT_INSTRUCTION in text and text.rstrip().endswith("Report:")


def test_instruction_is_overridable_and_indication_is_included(tiny):
    _, processor = tiny
    batch = processor(images=[xray(0)], instruction="List the findings.", indication="Fever and cough.")
    text = processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True)
    assert "List the findings." in text and DEFAULT_INSTRUCTION not in text
    assert "Indication: Fever and cough." in text


def test_labels_mask_images_prompt_and_padding(tiny):
    _, processor = tiny
    reports = ["The heart size is normal.", "Moderate right pleural effusion with adjacent atelectasis."]
    batch = processor(images=[[xray(0), xray(1)], [xray(2)]], report=reports)
    labels, ids = batch["labels"], batch["input_ids"]
    image_positions = ids == processor.image_token_id
    assert (labels[image_positions] == -100).all()
    assert (labels[batch["attention_mask"] == 0] == -100).all()
    for i, report in enumerate(reports):
        target = labels[i][labels[i] != -100]
        assert target[-1] == processor.tokenizer.eos_token_id
        assert processor.tokenizer.decode(target, skip_special_tokens=True).strip() == report
        # everything labelled is exactly the tail of the sequence (the report), nothing from the prompt
        n = len(target)
        real = ids[i][batch["attention_mask"][i] == 1]
        assert torch.equal(real[-n:], target)
    suffix_batch = processor(images=[[xray(0), xray(1)], [xray(2)]], suffix=reports)
    assert torch.equal(suffix_batch["labels"], labels)


def test_truncation_never_cuts_image_tokens(tiny):
    _, processor = tiny
    report = "Small left pleural effusion. " * 20
    full = processor(images=[xray(0)], report=report)
    length = full["input_ids"].shape[1]
    prompt_len = int((full["labels"][0] == -100).sum())
    with pytest.raises(ValueError, match="pass truncation=True"):
        processor(images=[xray(0)], report=report, max_length=length - 5)
    cut = processor(images=[xray(0)], report=report, max_length=length - 5, truncation=True)
    assert cut["input_ids"].shape[1] == length - 5
    with pytest.raises(ValueError, match="would cut image tokens"):
        processor(images=[xray(0)], report=report, max_length=prompt_len - 1, truncation=True)
    with pytest.raises(ValueError, match="empty"):
        processor(images=[xray(0)], report="   ")


def test_batch_decode_returns_clean_report_text(tiny):
    _, processor = tiny
    batch = processor(images=[xray(0)], report="No pleural effusion or pneumothorax.")
    assert processor.batch_decode(batch["input_ids"]) == ["No pleural effusion or pneumothorax."]
    only_report = processor.tokenizer(" The lungs are clear.", add_special_tokens=False)["input_ids"]
    assert processor.decode(only_report) == "The lungs are clear."


def test_chat_template_renders_the_default_prompt(tiny):
    _, processor = tiny
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                              {"type": "text", "text": DEFAULT_INSTRUCTION}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == processor.build_prompt(2)


def test_processor_save_load_round_trip(tmp_path, tiny):
    from transformers import AutoProcessor

    _, processor = tiny
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "RRGProcessor"
    assert (loaded.image_seq_length, loaded.image_token_id, loaded.max_views) == (
        processor.image_seq_length, processor.image_token_id, processor.max_views)
    assert loaded.chat_template == processor.chat_template
    a = processor(images=[[xray(0), xray(1)]], report="Normal.")
    b = loaded(images=[[xray(0), xray(1)]], report="Normal.")
    for key in a:
        assert torch.equal(a[key], b[key]), key


REPORTS = ["The heart size is normal.", "Moderate right pleural effusion with adjacent atelectasis and a small nodule."]


def _unpadded(processor, reports=REPORTS):
    """Each study alone (nothing to pad): the reference rows a padded batch must contain."""
    rows = [processor(images=[[xray(i)]], report=[r]) for i, r in enumerate(reports)]
    return [{key: row[key][0].tolist() for key in ("input_ids", "labels")} for row in rows]


def _expected(processor, rows, width, side):
    pad = processor.tokenizer.pad_token_id
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    for row in rows:
        n = width - len(row["input_ids"])
        for key, fill in (("input_ids", pad), ("labels", -100)):
            out[key].append(([fill] * n + row[key]) if side == "left" else (row[key] + [fill] * n))
        out["attention_mask"].append(([0] * n + [1] * len(row["input_ids"])) if side == "left"
                                     else ([1] * len(row["input_ids"]) + [0] * n))
    return out


@pytest.mark.parametrize("padding", [True, "longest"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_to_the_longest_row_on_either_side(tiny, padding, side):
    _, processor = tiny
    rows = _unpadded(processor)
    batch = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding=padding, padding_side=side)
    width = max(len(r["input_ids"]) for r in rows)
    expected = _expected(processor, rows, width, side)
    for key in expected:
        assert batch[key].tolist() == expected[key], key


def test_padding_to_max_length_and_to_a_multiple(tiny):
    _, processor = tiny
    rows = _unpadded(processor)
    longest = max(len(r["input_ids"]) for r in rows)
    batch = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding="max_length", max_length=longest + 7)
    assert batch["input_ids"].shape == (2, longest + 7)
    expected = _expected(processor, rows, longest + 7, "right")
    for key in expected:
        assert batch[key].tolist() == expected[key], key
    multiple = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, pad_to_multiple_of=16)
    width = -(-longest // 16) * 16
    assert multiple["input_ids"].tolist() == _expected(processor, rows, width, "right")["input_ids"]


@pytest.mark.parametrize("padding", [False, "do_not_pad"])
def test_no_padding_keeps_rows_as_they_are(tiny, padding):
    _, processor = tiny
    rows = _unpadded(processor)
    lists = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding=padding, return_tensors=None)
    assert lists["input_ids"] == [r["input_ids"] for r in rows]
    assert lists["labels"] == [r["labels"] for r in rows]
    assert lists["attention_mask"] == [[1] * len(r["input_ids"]) for r in rows]
    with pytest.raises(ValueError, match="pass padding=True"):
        processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding=padding)
    same = processor(images=[[xray(0)], [xray(1)]], padding=padding)  # equal-length prompts need no padding
    assert same["input_ids"].shape[0] == 2


def test_return_tensors_pt_np_and_lists(tiny):
    _, processor = tiny
    pt = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, return_tensors="pt")
    np_batch = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, return_tensors="np")
    lists = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, return_tensors=None)
    assert set(pt) == set(np_batch) == set(lists) == {"input_ids", "attention_mask", "labels", "pixel_values",
                                                       "num_views"}
    for key in pt:
        assert isinstance(pt[key], torch.Tensor), key
        assert isinstance(np_batch[key], np.ndarray), key
        assert isinstance(lists[key], list), key
        np.testing.assert_array_equal(np_batch[key], pt[key].numpy())
        np.testing.assert_array_equal(np.asarray(lists[key]), pt[key].numpy())
    assert pt["input_ids"].dtype == torch.long and np_batch["input_ids"].dtype == np.int64
    with pytest.raises(ValueError, match="return_tensors must be"):
        processor(images=[xray(0)], return_tensors="tf")


def test_padding_side_per_call_beats_the_processor_and_the_tokenizer(tiny):
    _, processor = tiny
    assert processor.padding_side == "right"
    right = processor(images=[[xray(0)], [xray(1)]], report=REPORTS)
    processor.tokenizer.padding_side = "left"  # someone flips the shared tokenizer (as a pipeline does)
    try:
        assert torch.equal(processor(images=[[xray(0)], [xray(1)]], report=REPORTS)["input_ids"], right["input_ids"])
        left = processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding_side="left")
        rows = _unpadded(processor)
        assert left["labels"].tolist() == _expected(processor, rows, right["input_ids"].shape[1], "left")["labels"]
        processor.tokenizer.padding_side = "right"
        assert torch.equal(processor(images=[[xray(0)], [xray(1)]], report=REPORTS, padding_side="left")["input_ids"],
                           left["input_ids"])
    finally:
        processor.tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right'"):
        processor(images=[xray(0)], padding_side="middle")


def test_configured_padding_side_is_saved(tmp_path, tiny):
    from transformers import AutoProcessor

    from modeling_rrg import RRGProcessor

    _, processor = tiny
    left = RRGProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                        image_seq_length=processor.image_seq_length, padding_side="left")
    left.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert loaded.padding_side == "left" and loaded.tokenizer.padding_side == "right"
    assert loaded(images=[[xray(0)], [xray(1)]], report=REPORTS)["attention_mask"][0, 0] == 0

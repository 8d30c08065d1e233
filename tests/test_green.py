"""rexrank/GREEN: RadEval's GREEN class on a local judge folder, through the registry."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from helpers import one_torch_thread_fixture
from training.evaluation.metrics.registry import Inputs, compute_metric

if importlib.util.find_spec("radeval") is None:  # not importorskip: importing radeval runs its nltk.download
    pytest.skip("RadEval 2.2.1 is not installed (`pip install --no-deps radeval==2.2.1`)", allow_module_level=True)
pytest.importorskip("datasets")
pytest.importorskip("pandas")

_one_thread = one_torch_thread_fixture()

PREDICTIONS = ["Small left pleural effusion.", "Heart size is normal. No pneumothorax.", "Mild cardiomegaly."]
REFERENCES = ["No pleural effusion.", "Heart size is normal. No pneumothorax.", "Moderate cardiomegaly. Edema."]


@pytest.fixture(scope="module")
def tiny_green(tmp_path_factory):
    from training.sandbox.tiny_scorers import save_tiny_green

    return save_tiny_green(tmp_path_factory.mktemp("green") / "GREEN-tiny", PREDICTIONS + REFERENCES)


def _green(predictions, references, folder):
    (stats,) = compute_metric("rexrank/GREEN", Inputs(predictions, references, {"green_model": str(folder)}))
    return stats


def test_import_leaves_radeval_init_and_process_settings_alone():
    # In a fresh interpreter: other tests import `radeval` itself (pytest.importorskip), which would hide the check.
    import subprocess
    import sys

    code = (
        "import multiprocessing, sys\n"
        "from training.evaluation.metrics.green import radeval_green\n"
        "start = multiprocessing.get_start_method(allow_none=True)\n"
        "module = radeval_green()\n"
        "assert hasattr(module, 'GREEN') and hasattr(module, 'make_prompt')\n"
        "assert multiprocessing.get_start_method(allow_none=True) == start, 'start method changed'\n"
        "assert 'radeval.radeval' not in sys.modules, 'radeval/__init__.py (nltk.download) ran'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_green_equals_radevals_green_class(tiny_green):
    """Greedy decoding on the same folder: per-report scores and judge texts equal RadEval's GREEN run directly."""
    from training.evaluation.metrics.green import green_scores, radeval_green

    ours = green_scores(PREDICTIONS, REFERENCES, tiny_green, cpu=True)
    mean, _, reference_scores, results = radeval_green().GREEN(str(tiny_green), cpu=True)(REFERENCES, PREDICTIONS)
    np.testing.assert_allclose(ours["scores"], np.asarray(reference_scores, dtype=float))
    assert ours["mean"] == pytest.approx(mean)
    assert ours["analyses"] == list(results["green_analysis"])
    assert len(set(ours["analyses"])) == len(PREDICTIONS)  # the judge saw each pair's own prompt


def _judgment(significant: list[int], insignificant: list[int], matched: int | None) -> str:
    kinds = ["False report of a finding in the candidate", "Missing a finding present in the reference",
             "Misidentification of a finding's anatomic location/position", "Misassessment of the severity of a finding",
             "Mentioning a comparison that isn't in the reference",
             "Omitting a comparison detailing a change from a prior study"]
    letters = "abcdef"

    def block(counts):
        return "\n".join(f"({letters[i]}) {kinds[i]}: {n}." + (" finding." if n else "") for i, n in enumerate(counts))

    text = (f"[Explanation]:\nThe candidate differs.\n\n[Clinically Significant Errors]:\n{block(significant)}\n\n"
            f"[Clinically Insignificant Errors]:\n{block(insignificant)}\n\n")
    text += "[Matched Findings]:\n" + (f"{matched}. finding." if matched is not None else "No matched findings.")
    return text


# candidate report -> (scripted judge output, GREEN by hand: matched / (matched + clinically significant errors))
SCRIPTED = {
    PREDICTIONS[0]: (_judgment([1, 0, 0, 1, 0, 0], [2, 0, 0, 0, 0, 0], 2), 2 / (2 + 2)),
    PREDICTIONS[1]: (_judgment([0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], 3), 1.0),
    PREDICTIONS[2]: (_judgment([0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 5], None), 0.0),
    "Right upper lobe consolidation.": (_judgment([0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], 3), 3 / (3 + 1)),
}


def test_green_parses_scripted_judge_outputs(tiny_green, monkeypatch):
    """A judge whose generate returns fixed texts: the entry's per-report GREEN are the hand-computed values, in
    report order (each text is picked by the candidate report in the prompt it was given)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_green))

    def generate(self, input_ids, attention_mask, eos_token_id, pad_token_id, **kwargs):
        rows = []
        for row in input_ids:
            prompt = tokenizer.decode(row, skip_special_tokens=True)
            candidate = re.search(r"3\. Candidate Report:\n\s*(.*?)\n\n", prompt).group(1)
            rows.append(tokenizer(SCRIPTED[candidate][0], add_special_tokens=False)["input_ids"] + [eos_token_id])
        width = max(len(r) for r in rows)
        new = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", generate)
    predictions = [*PREDICTIONS, "Right upper lobe consolidation."]
    references = [*REFERENCES, "No consolidation."]
    stats = _green(predictions, references, tiny_green)
    expected = [SCRIPTED[p][1] for p in predictions]
    np.testing.assert_allclose(stats.per_report(), expected)
    assert stats.value() == pytest.approx(np.mean(expected))


def test_missing_green_folder_or_file_names_it(tmp_path, tiny_green):
    import shutil

    from training.evaluation.metrics.green import check_green_folder

    with pytest.raises(ValueError, match="--green-model"):
        compute_metric("rexrank/GREEN", Inputs(PREDICTIONS, REFERENCES, {}))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        _green(PREDICTIONS, REFERENCES, tmp_path / "nowhere")
    broken = shutil.copytree(tiny_green, tmp_path / "broken")
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        check_green_folder(broken)
    (broken / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(broken / "config.json"))):
        check_green_folder(broken)


def test_rexrank_protocol_lists_green_as_optional():
    from training.evaluation.metrics.protocols import get_protocol

    entries = {e.metric: e for e in get_protocol("rexrank").entries}
    assert entries["rexrank/GREEN"].optional

"""Tiny random scorer models in the formats their real releases use, for tests and benchmarks (nothing downloads here).

- [`save_tiny_bert`]: a BERT encoder folder (`config.json`, `vocab.txt` tokenizer, optionally `model.safetensors`),
  its vocabulary the words of the given texts.
- [`save_tiny_radgraph`]: a released RadGraph model folder (`config.json` = the AllenNLP/DyGIE++ config naming the
  encoder by Hub id, `vocabulary/<model type>__{ner,relation}_labels.txt`, `weights.th`) plus the encoder folder
  holding that id's config and tokenizer, built with RadEval's vendored DyGIE++ classes.
- [`save_tiny_chexbert`]: a `chexbert.pth` as the CheXbert authors release it (`{"model_state_dict": ...}`, keys
  prefixed `module.` by `nn.DataParallel`).
- [`save_tiny_green`]: a GREEN judge folder (a LLaMA causal LM with its tokenizer, as StanfordAIMI/GREEN-RadLlama2-7b).
- [`save_tiny_ratescore`]: RaTEScore's NER (token classification, B-/I- entity labels) and entity-encoder folders.

The weights are random: scores from them test plumbing and parity with reference implementations, not quality.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

__all__ = ["save_tiny_bert", "save_tiny_radgraph", "save_tiny_chexbert", "save_tiny_green", "save_tiny_ratescore", "RADGRAPH_ENTITY_LABELS",
           "RADGRAPH_RELATION_LABELS"]

RADGRAPH_ENTITY_LABELS = ("ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA")
RADGRAPH_RELATION_LABELS = ("located_at", "modify", "suggestive_of")
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocabulary(texts) -> list[str]:
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    # digits "1" and "2" are needed by AllenNLP's tokenizer probe (it encodes "1" and "2" and compares the ids)
    return _SPECIAL + [w for w in dict.fromkeys(["0", "1", "2", "3", ".", ",", "-", "/", ":", *words])]


def save_tiny_bert(folder, texts=(), hidden_size: int = 32, num_layers: int = 2, weights: bool = True,
                   seed: int = 0, model_type: str = "bert", max_positions: int = 130) -> Path:
    """A tiny encoder folder loadable with `AutoModel` / `AutoTokenizer` (local files only).

    Args:
        folder: Output folder.
        texts: Texts whose words (lower-cased, punctuation split) form the WordPiece vocabulary.
        hidden_size, num_layers, max_positions: Geometry (2 attention heads).
        weights (`bool`): Write random weights (`model.safetensors`); `False` writes config and tokenizer only.
        seed (`int`): Seed of the random weights.
        model_type (`str`): `"bert"` or `"roberta"` (a RoBERTa geometry with the same WordPiece tokenizer).
    """
    import torch
    from transformers import AutoConfig, AutoModel, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocabulary(texts)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    config = AutoConfig.for_model(model_type, vocab_size=len(vocab), hidden_size=hidden_size,
                                  num_hidden_layers=num_layers, num_attention_heads=2, intermediate_size=37,
                                  max_position_embeddings=max_positions, pad_token_id=0)
    config.save_pretrained(str(folder))
    if weights:
        torch.manual_seed(seed)
        AutoModel.from_config(config).save_pretrained(str(folder))
    return folder


def _dygie_config(encoder_name: str, max_span_width: int = 8) -> dict:
    # The structure of the released archives' config.json (AllenNLP training config of DyGIE++): reader and model
    # both name the encoder, the model block holds the DyGIE arguments.
    indexer = {"type": "pretrained_transformer_mismatched", "max_length": 512, "model_name": encoder_name}
    return {
        "dataset_reader": {"type": "dygie", "max_span_width": max_span_width, "token_indexers": {"bert": indexer}},
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": dict(indexer)}},
            "feature_size": 20,
            "feedforward_params": {"dropout": 0.4, "hidden_dims": 24, "num_layers": 2},
            "initializer": {"regexes": [["_span_width_embedding.weight", {"type": "xavier_normal"}]]},
            "loss_weights": {"coref": 0, "events": 0, "ner": 1, "relation": 1},
            "max_span_width": max_span_width,
            "module_initializer": {"regexes": [[".*weight", {"type": "xavier_normal"}],
                                               [".*weight_matrix", {"type": "xavier_normal"}]]},
            "modules": {
                "coref": {"coref_prop": 0, "max_antecedents": 100, "spans_per_word": 0.3},
                "events": {"argument_spans_per_word": 0.8, "loss_weights": {"arguments": 1, "trigger": 0.2},
                           "trigger_spans_per_word": 0.3},
                "ner": {},
                "relation": {"spans_per_word": 0.5},
            },
            "target_task": "relation",
        },
        "data_loader": {"sampler": {"type": "random"}},
        "trainer": {"num_epochs": 1, "optimizer": {"type": "adamw", "lr": 0.001}},
    }


def save_tiny_radgraph(folder, texts=(), model_type: str = "radgraph", seed: int = 0,
                       encoder_name: str | None = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext",
                       entity_bias: float = -1.0, relation_bias: float = 2.0, entity_scale: float = 30.0,
                       max_positions: int = 130) -> tuple[Path, Path]:
    """A released-format RadGraph folder `folder/<model_type>` and its encoder folder `folder/encoder`.

    Args:
        folder: Output folder.
        texts: Texts whose words form the encoder's vocabulary.
        model_type (`str`): Model type the vocabulary namespaces are named after (`"radgraph"`, `"radgraph-xl"`).
        seed (`int`): Seed of the random weights.
        encoder_name (`str`, *optional*): Encoder id written into config.json (the released configs name a Hub
            model); `None` writes the encoder folder's path, so code that resolves the name itself (RadEval's
            `RadGraph`) loads the folder as it is.
        entity_scale, entity_bias, relation_bias (`float`): The entity scorer's output weights are multiplied by
            `entity_scale` and its biases shifted by `entity_bias`, the relation scorer's biases by `relation_bias`,
            so a random model labels some spans (about one per word) and relates some of them.
        max_positions (`int`): The encoder's positions (512 for long reports: the reader truncates at 512 tokens).

    Returns:
        `(model_dir, encoder_dir)`.
    """
    import torch
    from dotmap import DotMap

    from ..evaluation.metrics.radgraph import vendored_radgraph

    folder = Path(folder)
    encoder_dir = save_tiny_bert(folder / "encoder", texts, weights=False, max_positions=max_positions)
    model_dir = folder / model_type
    vocab_dir = model_dir / "vocabulary"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "non_padded_namespaces.txt").write_text("*tags\n*labels\n", encoding="utf-8")
    # index 0 of the entity labels is the null label "" (DyGIE's NER scores it 0 and the others by the scorer)
    (vocab_dir / f"{model_type}__ner_labels.txt").write_text("\n" + "\n".join(RADGRAPH_ENTITY_LABELS) + "\n",
                                                              encoding="utf-8")
    (vocab_dir / f"{model_type}__relation_labels.txt").write_text("\n".join(RADGRAPH_RELATION_LABELS) + "\n",
                                                                   encoding="utf-8")
    config = _dygie_config(str(encoder_dir.resolve()) if encoder_name is None else encoder_name)
    (model_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    # Build the model the way the vendored RadGraph does, with the encoder's local folder, and save its state dict.
    vocabulary = vendored_radgraph("allennlp.data").Vocabulary.from_files(str(vocab_dir))
    embedders = vendored_radgraph("allennlp.modules.token_embedders")
    field_embedders = vendored_radgraph("allennlp.modules.text_field_embedders")
    dygie = vendored_radgraph("dygie.models.dygie")
    torch.manual_seed(seed)  # the encoder's random weights too
    embedder = field_embedders.BasicTextFieldEmbedder(
        {"bert": embedders.PretrainedTransformerMismatchedEmbedder(model_name=str(encoder_dir), max_length=512)})
    arguments = DotMap(config["model"]).toDict()
    for name in ("type", "embedder", "initializer", "module_initializer"):
        arguments.pop(name)
    model = dygie.DyGIE(vocab=vocabulary, embedder=embedder, **arguments)
    state = model.state_dict()
    with torch.no_grad():
        for key, value in state.items():
            if "_ner_scorers" in key and key.endswith("1._module.weight"):
                value.mul_(entity_scale)
            if "_ner_scorers" in key and key.endswith("1._module.bias"):
                value.add_(entity_bias)
            if "_relation_scorers" in key and key.endswith("bias"):
                value.add_(relation_bias)
    torch.save(state, model_dir / "weights.th")
    return model_dir, encoder_dir


def save_tiny_chexbert(path, tokenizer_dir, seed: int = 0, initializer_range: float = 1.0) -> Path:
    """A random `chexbert.pth` in the released format, on the BERT geometry of `tokenizer_dir` (a
    [`save_tiny_bert`] folder): 13 four-class heads and the two-class "No Finding" head on the [CLS] state. The
    large `initializer_range` makes the [CLS] embeddings of different reports differ (BERT's 0.02 gives cosines
    within 1e-4 of 1 on a random model)."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(str(tokenizer_dir))
    config.initializer_range = initializer_range
    torch.manual_seed(seed)
    bert = BertModel(config)
    state = OrderedDict((f"module.bert.{k}", v) for k, v in bert.state_dict().items() if not k.endswith("position_ids"))
    for i in range(14):
        classes = 2 if i == 13 else 4
        state[f"module.linear_heads.{i}.weight"] = torch.randn(classes, config.hidden_size)
        state[f"module.linear_heads.{i}.bias"] = torch.zeros(classes)
    path = Path(path)
    torch.save({"model_state_dict": state, "epoch": 0}, path)
    return path


def save_tiny_green(folder, texts=(), seed: int = 0, vocab_size: int = 1024, hidden_size: int = 32) -> Path:
    """A GREEN judge folder as the released ones are (a LLaMA causal LM: `config.json`, `model.safetensors`,
    `generation_config.json`, tokenizer files), random weights, loadable by RadEval's `GREEN` class.

    The byte-level BPE tokenizer is trained on RadEval's GREEN prompt of `texts` (so the prompt is a few hundred
    tokens) and decodes any text back unchanged.

    Args:
        folder: Output folder.
        texts: Reports whose words the tokenizer learns (with the prompt's words).
        seed (`int`): Seed of the random weights.
        vocab_size, hidden_size: Geometry (2 layers, 2 heads, 2048 positions: GREEN's `max_length`).
    """
    import torch
    from transformers import LlamaForCausalLM

    from ..evaluation.metrics.green import radeval_green
    from .tiny import tiny_text_config, train_bpe_tokenizer

    folder = Path(folder)
    make_prompt = radeval_green().make_prompt
    corpus = [make_prompt(t, t) for t in (*texts, "")] + list(texts)
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = tiny_text_config("llama", vocab_size=len(tokenizer), hidden_size=hidden_size, max_positions=2048)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


RATESCORE_ENTITY_TYPES = ("ABNORMALITY", "ANATOMY", "DISEASE", "NON-ABNORMALITY", "NON-DISEASE")


def save_tiny_ratescore(folder, texts=(), seed: int = 0) -> tuple[Path, Path]:
    """RaTEScore's two model folders as released, random weights: `folder/ner` (a token-classification model whose
    `id2label` is `O` and `B-`/`I-` of RaTEScore's entity types, as RaTE-NER-Deberta) and `folder/embedding` (an
    encoder, as BioLORD-2023-C); WordPiece tokenizers of the words of `texts`.

    Returns:
        `(ner_dir, embedding_dir)`.
    """
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification

    folder = Path(folder)
    ner_dir = save_tiny_bert(folder / "ner", texts, weights=False)
    labels = ["O"] + [f"{prefix}-{kind}" for kind in RATESCORE_ENTITY_TYPES for prefix in "BI"]
    config = AutoConfig.from_pretrained(str(ner_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
                                        label2id={label: i for i, label in enumerate(labels)})
    torch.manual_seed(seed)
    AutoModelForTokenClassification.from_config(config).save_pretrained(str(ner_dir))
    embedding_dir = save_tiny_bert(folder / "embedding", texts, seed=seed + 1)
    return ner_dir, embedding_dir

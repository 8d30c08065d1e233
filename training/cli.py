"""The `rrg` command: one entry point for data, training, evaluation, analyses, export and the demo.

```
rrg demo      [--output-dir outputs/demo] [--quick]         the main job on the synthetic benchmark
rrg data      --out DIR [--num-train N ...]                 generate the synthetic benchmark
rrg train     --config RECIPE.yaml [--field value ...]      stage 1 or 2 (trl SFTTrainer; torchrun-able)
rrg evaluate  --model DIR --data DATA --output-dir DIR      generate + BLEU/METEOR/ROUGE-L/CIDEr + clinical efficacy
rrg analyze   --model DIR --data DATA --output-dir DIR      soft-prompt and attention analyses
rrg export    MODEL_DIR --output-dir DIR [--metrics EVAL]   Hub-ready folder (merged, remote code, model card)
rrg push      FOLDER --repo-id ORG/NAME [--private] [--dry-run]   upload to the Hugging Face Hub
rrg serve     MODEL [--port 7860] [--write-space DIR]       browser demo (Gradio) of an export or a Hub id
```
Each sub-command has its own `--help`.
"""

import importlib
import logging
import sys

__all__ = ["COMMANDS", "LOG_FORMAT", "setup_logging", "main"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Errors raised for bad input (see STYLE.md: ValueError / TypeError with a message that says what to change).
USER_ERRORS = (ValueError, TypeError, FileNotFoundError)


def setup_logging(level: int = logging.INFO) -> None:
    """The one logging setup of the `rrg` command (library modules only log; they never configure logging)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT)

# command -> (module, function, one-line help)
COMMANDS = {
    "demo": ("training.sandbox.demo", "main", "Run the whole pipeline on the synthetic benchmark (what `make demo` runs)."),
    "data": ("training.sandbox.synthetic", "main", "Generate the synthetic chest X-ray benchmark."),
    "train": ("training.sft.train", "main", "Train stage 1 (projector) or stage 2 (LoRA/full + projector)."),
    "evaluate": ("training.evaluation.evaluator", "main", "Generate reports for a split and score them."),
    "analyze": ("training.analysis.report", "main", "Soft visual prompt and attention analyses (the paper's section 4)."),
    "export": ("training.release.export", "export_main", "Make a Hub-ready folder from a trained one."),
    "push": ("training.release.push", "push_main", "Upload an exported folder to the Hugging Face Hub."),
    "serve": ("training.serve", "main", "Browser demo (Gradio) of an exported folder or a Hub id."),
}


def _usage() -> str:
    lines = ["usage: rrg <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `rrg <command> --help` for the options of a command."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"rrg: unknown command {command!r}.\n\n" + _usage())
        return 2
    module_name, function, _ = COMMANDS[command]
    setup_logging()
    module = importlib.import_module(module_name)
    try:
        result = getattr(module, function)(rest)
    except USER_ERRORS as err:
        # Bad input (a missing folder, a wrong option value): the message says what to change; no traceback.
        logging.getLogger("rrg").error("%s", err)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

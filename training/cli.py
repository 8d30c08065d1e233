"""The `rrg` command: one entry point for data, training, evaluation, analyses, export and the demo.

```
rrg demo      [--output-dir outputs/demo] [--quick]         the main job on the synthetic benchmark
rrg data      --out DIR [--num-train N ...]                 generate the synthetic benchmark
rrg train     --config RECIPE.yaml [--field value ...]      stage 1 or 2 (trl SFTTrainer; torchrun-able)
rrg evaluate  --model DIR --data DATA --output-dir DIR      generate + BLEU/METEOR/ROUGE-L/CIDEr + clinical efficacy
rrg compare   A/predictions.jsonl B/predictions.jsonl       paired bootstrap: B - A per metric, CI, p-value
rrg rexrank-submit --model DIR --input_json_file F --save_json_file F --img_root_dir DIR   ReXrank submission
rrg analyze   --model DIR --data DATA --output-dir DIR      soft-prompt and attention analyses
rrg probe     --model DIR --dataset_path DATA --output_dir DIR   linear probe per finding on the encoder vs the report model
rrg export    MODEL_DIR --output-dir DIR [--metrics EVAL]   Hub-ready folder (merged, remote code, model card)
rrg push      FOLDER --repo-id ORG/NAME [--private] [--dry-run]   upload to the Hugging Face Hub
rrg plan      --config RECIPE.yaml [--gpu a100 --mfu 0.4]   parameters, FLOPs, memory and GPU-hours of a GPU recipe
rrg serve     MODEL [--port 7860] [--write-space DIR]       browser demo (Gradio) of an export or a Hub id
```
Each sub-command has its own `--help`. An error prints one line on stderr (`rrg <command>: error: ...`) and exits
with status 1; add `--debug` anywhere to see the full traceback instead.
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
    "rexrank-submit": ("training.evaluation.rexrank_submit", "main",
                       "Generate a ReXrank submission (inference.py form: --input_json_file --save_json_file --img_root_dir)."),
    "compare": ("training.evaluation.compare", "main", "Paired bootstrap test between two prediction files of the same studies."),
    "analyze": ("training.analysis.report", "main", "Soft visual prompt and attention analyses (the paper's section 4)."),
    "probe": ("training.analysis.probe", "main", "Reading ceiling: a linear probe per finding on the frozen encoder vs the report model."),
    "export": ("training.release.export", "export_main", "Make a Hub-ready folder from a trained one."),
    "push": ("training.release.push", "push_main", "Upload an exported folder to the Hugging Face Hub."),
    "plan": ("training.sft.plan", "main", "Estimate a GPU recipe's parameters, FLOPs, memory and GPU-hours (meta device)."),
    "serve": ("training.serve", "main", "Browser demo (Gradio) of an exported folder or a Hub id."),
}


def _usage() -> str:
    lines = ["usage: rrg <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `rrg <command> --help` for the options of a command."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"rrg: unknown command {command!r}.\n\n" + _usage())
        return 2
    module_name, function, _ = COMMANDS[command]
    setup_logging()
    try:
        module = importlib.import_module(module_name)
        result = getattr(module, function)(rest)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"rrg {command}: interrupted.\n")
        return 130
    except Exception as err:  # every failure reaches the user as one line; --debug shows where it came from
        if debug:
            raise
        logging.getLogger(__name__).debug("rrg %s failed", command, exc_info=True)
        sys.stderr.write(f"rrg {command}: error: {_one_line(err)} (add --debug for the traceback)\n")
        # 2: bad input the message says how to fix (a missing folder, a wrong value); 1: anything else.
        return 2 if isinstance(err, USER_ERRORS) else 1
    return result if isinstance(result, int) else 0


def _one_line(err: BaseException) -> str:
    # Built-in errors that carry only a path or a key read badly alone ("[Errno 2] ...", "'x'"): name their type.
    text = " ".join(str(err).split())
    if not text or isinstance(err, (KeyError, AttributeError, TypeError, NameError, ImportError, OSError)) \
            and not isinstance(err, FileNotFoundError):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())

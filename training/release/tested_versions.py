"""The transformers releases the remote code was last tested on, as recorded by the compatibility matrix.

`tests/test_remote_code_compat.py` tests the oldest supported, the locked and the newest-on-the-index transformers
(and trains on the newest training stack). A passing run writes what it tested to a results file outside the source
tree (`.cache/tested_versions.json`, or `$RRG_TESTED_VERSIONS_RESULTS`); tests never write tracked files.
`make tested-versions` runs the matrix, then this module's command copies the results into the record,
`hub_cards/tested_versions.json`, and the README's block between the tested-versions markers:

```bash
python -m training.release.tested_versions --results .cache/tested_versions.json
```

The model card and the README state the range from the record, so neither is typed by hand, and
`tests/test_tested_versions.py` fails when the record is stale (a newer transformers on the index, a new lock).
"""

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from datetime import date
from importlib import resources
from pathlib import Path

from ..fileio import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "README_END",
    "README_START",
    "RESULTS_ENV",
    "STACK",
    "expected_versions",
    "load_tested_versions",
    "locked_version",
    "newest_on_index",
    "oldest_supported",
    "project_specs",
    "promote_results",
    "record_result",
    "render_tested_versions",
    "results_path",
    "stale_entries",
    "sync_readme",
]

README_START, README_END = "<!-- tested-versions:start -->", "<!-- tested-versions:end -->"
RESULTS_ENV = "RRG_TESTED_VERSIONS_RESULTS"
# The training stack the matrix resolves to its newest releases together for the training check.
STACK = ("transformers", "trl", "peft", "accelerate", "datasets")
# What a complete run of the matrix records (the date and torch come with every result).
ROLES = ("transformers_oldest", "transformers_locked", "transformers_newest", "training_stack_newest")
# The checkout this module sits in (the release commands read its pyproject.toml and lock; a wheel has neither).
CHECKOUT = Path(__file__).resolve().parents[2]
RECORD = Path("hub_cards") / "tested_versions.json"
LOCK = Path("requirements") / "lock.txt"


def _path() -> Path:
    # hub_cards/ is a data-only package (editable install: the checkout's folder; wheel: its installed copy).
    return Path(str(resources.files("hub_cards").joinpath("tested_versions.json")))


def load_tested_versions(path: str | Path | None = None) -> dict:
    """The recorded matrix (an empty dict when it was never run)."""
    path = Path(path) if path is not None else _path()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def render_tested_versions(tested: dict) -> str:
    """One markdown paragraph saying which releases passed, for the README and the model card."""
    roles = [("transformers_oldest", "oldest supported"), ("transformers_locked", "locked"),
             ("transformers_newest", "newest on the package index")]
    parts = [f"{tested[key]} ({label})" for key, label in roles if tested.get(key)]
    if not parts:
        return "The compatibility matrix has not been run yet."
    text = f"Last passing run ({tested.get('tested_on', 'date unknown')}, torch {tested.get('torch', '?')}): " \
           f"the remote code on transformers {', '.join(parts)}"
    stack = tested.get("training_stack_newest")
    if stack:
        text += "; both training stages on " + ", ".join(f"{name} {version}" for name, version in sorted(stack.items()))
    return text + "."


def sync_readme(readme: str | Path, tested: dict | None = None) -> bool:
    """Rewrite the README's tested-versions block from the record; returns whether the file changed."""
    readme = Path(readme)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block to fill in.")
    block = f"{README_START}\n{render_tested_versions(tested if tested is not None else load_tested_versions())}\n{README_END}"
    new = re.sub(re.escape(README_START) + r".*?" + re.escape(README_END), lambda _: block, text, flags=re.S)
    if new == text:
        return False
    write_text_atomic(readme, new)
    return True


# ------------------------------------------------------------------ what the matrix should test today
def _checkout_file(root: Path, relative: Path) -> Path:
    path = Path(root) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the tested-versions commands read a checkout of the rrg repository "
            "(pyproject.toml, requirements/lock.txt), not an installed wheel."
        )
    return path


def project_specs(root: str | Path = CHECKOUT) -> dict[str, str]:
    """The requirement of each dependency in `pyproject.toml`, keyed by lower-case name (`"transformers>=5.0,<6"`)."""
    import tomllib

    deps = tomllib.loads(_checkout_file(root, Path("pyproject.toml")).read_text())["project"]["dependencies"]
    return {re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower(): dep.replace(" ", "") for dep in deps}


def oldest_supported(root: str | Path = CHECKOUT) -> str:
    """The floor of pyproject's transformers range, as a three-part version (`>=5.0` -> `5.0.0`)."""
    spec = project_specs(root)["transformers"]
    floor = re.search(r">=([0-9][0-9.]*)", spec)
    if floor is None:
        raise ValueError(f"pyproject.toml's {spec!r} has no lower bound (>=): the oldest supported is unknown.")
    parts = floor.group(1).split(".")
    return ".".join((parts + ["0", "0"])[:3])


def locked_version(name: str, root: str | Path = CHECKOUT) -> str:
    """The version `requirements/lock.txt` pins for `name`."""
    lock = _checkout_file(root, LOCK)
    for line in lock.read_text().splitlines():
        if line.lower().startswith(f"{name.lower()}=="):
            return line.split("==", 1)[1].strip()
    raise ValueError(f"{lock} pins no {name}; run `make lock`.")


def newest_on_index(*requirements: str, python: str = sys.executable) -> dict[str, str]:
    """The versions pip resolves today for `requirements` (each within its range), asking the package index."""
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps",
         "--disable-pip-version-check", "--report", "-", *requirements],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"Could not ask the package index for the newest {requirements}: pip said\n{proc.stderr[-2000:]}\n"
            "The compatibility matrix needs the package index (PyPI) to resolve the newest releases."
        )
    report = json.loads(proc.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


def expected_versions(root: str | Path = CHECKOUT) -> dict:
    """What a run of the matrix today tests: the oldest supported and locked transformers (offline) and the newest
    transformers and training stack on the package index (asks pip)."""
    specs = project_specs(root)
    stack = newest_on_index(*(specs[name] for name in STACK))
    return {
        "transformers_oldest": oldest_supported(root),
        "transformers_locked": locked_version("transformers", root),
        "transformers_newest": stack["transformers"],
        "training_stack_newest": {name: stack[name] for name in STACK},
    }


def stale_entries(recorded: dict, expected: dict) -> list[str]:
    """One line per role whose recorded version is not what a run today would test (empty when current)."""
    return [f"{role}: recorded {recorded.get(role)!r}, today {expected[role]!r}"
            for role in expected if recorded.get(role) != expected[role]]


# --------------------------------------------------------------------------- results and the record
def results_path(root: str | Path = CHECKOUT) -> Path:
    """Where the matrix writes what passed: `$RRG_TESTED_VERSIONS_RESULTS`, else `<checkout>/.cache/` (ignored by
    git), never a tracked file."""
    return Path(os.environ.get(RESULTS_ENV) or Path(root) / ".cache" / "tested_versions.json")


def record_result(path: str | Path, role: str, value, torch_version: str) -> None:
    """Add one passing result (`role` -> version or {package: version}) to the results file at `path`.

    The file is locked while it is read and rewritten: parallel test workers record into the same file.
    """
    import fcntl  # the matrix runs on POSIX; importing it here keeps this module importable elsewhere

    if role not in ROLES:
        raise ValueError(f"Unknown tested-versions role {role!r}; expected one of {ROLES}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = load_tested_versions(path)
        data.update({role: value, "tested_on": date.today().isoformat(), "torch": torch_version})
        write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def promote_results(results: str | Path, root: str | Path = CHECKOUT) -> dict:
    """Copy a complete run's results into `hub_cards/tested_versions.json` and the README block of the checkout.

    Raises `ValueError` when the run did not test every role, or tested another oldest / locked transformers than
    the checkout's pyproject.toml and lock name (results left over from before a `make lock`).
    """
    results, root = Path(results), Path(root)
    if not results.is_file():
        raise FileNotFoundError(
            f"{results} not found: run the compatibility matrix first (`make tested-versions` runs it, then this)."
        )
    data = load_tested_versions(results)
    missing = [role for role in ROLES if not data.get(role)]
    if missing:
        raise ValueError(
            f"{results} has no result for {', '.join(missing)}: that part of tests/test_remote_code_compat.py did "
            "not pass (or was not run). Run the whole matrix (`make tested-versions`)."
        )
    offline = {"transformers_oldest": oldest_supported(root), "transformers_locked": locked_version("transformers", root)}
    stale = stale_entries(data, offline)
    if stale:
        raise ValueError(f"{results} is from another checkout state ({'; '.join(stale)}); run `make tested-versions`.")
    record = {key: data[key] for key in (*ROLES, "tested_on", "torch")}
    write_text_atomic(root / RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    sync_readme(root / "README.md", record)
    logger.info("Recorded the tested versions in %s and README.md: %s", root / RECORD, render_tested_versions(record))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m training.release.tested_versions",
        description="Copy the compatibility matrix's results into hub_cards/tested_versions.json and the README.",
    )
    parser.add_argument("--results", type=Path, default=None,
                        help=f"results file the matrix wrote (default: ${RESULTS_ENV} or .cache/tested_versions.json)")
    parser.add_argument("--root", type=Path, default=CHECKOUT, help="the checkout to update (default: this one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    promote_results(args.results if args.results is not None else results_path(args.root), args.root)


if __name__ == "__main__":
    main()

"""Upload an exported folder to the Hugging Face Hub: `rrg push` (checks access before any work; `--dry-run`)."""

import argparse
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["list_upload_files", "check_hub_access", "push_to_hub", "push_main"]


def list_upload_files(folder: str | Path) -> list[tuple[str, int]]:
    """`(relative path, size in bytes)` of every file `push_to_hub` uploads from `folder`, sorted."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            files.append((relative.as_posix(), path.stat().st_size))
    return files


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def check_hub_access(token: str | None = None, endpoint: str | None = None) -> str:
    """
    Make sure an upload can work before doing any: Hub access allowed (not `HF_HUB_OFFLINE`), a token available
    (`token`, `HF_TOKEN` or `hf auth login`), and the Hub reachable and accepting the token.

    Returns:
        `str`: the token.

    Raises:
        ValueError: saying which of the three is missing and how to fix it.
    """
    from huggingface_hub import HfApi, get_token

    if _env_flag("HF_HUB_OFFLINE"):
        raise ValueError("HF_HUB_OFFLINE is set: uploads need the Hub. Unset it (and check the network) to push.")
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token: run `hf auth login` or set HF_TOKEN to a token with write access, then retry."
        )
    try:
        HfApi(endpoint=endpoint, token=token).whoami()
    except Exception as err:  # connection errors and HTTP errors have no common public base class
        raise ValueError(
            f"Cannot reach the Hugging Face Hub or the token was refused ({type(err).__name__}: {err}). Check the "
            "network and that the token is valid and has write access."
        ) from err
    return token


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
):
    r"""
    Upload an exported folder to the Hub: create the repository (`private` or public), the branch `revision` when
    it is not `main`, then one commit with every file.

    Access (not offline, a token, the Hub reachable) is checked before any work; `dry_run=True` contacts nothing and
    returns the plan.

    Args:
        folder: The folder `export_model` wrote.
        repo_id (`str`): Target model repository, `org/name`.
        private (`bool`, *optional*): Create the repository private (an existing repository keeps its visibility).
        revision (`str`, *optional*): Branch to commit to (created from `main` if missing); default `main`.
        commit_message (`str`, *optional*): The commit message.
        token (`str`, *optional*): Token to use instead of `HF_TOKEN` / the stored login.
        dry_run (`bool`, *optional*): Only list what would be uploaded.

    Returns:
        With `dry_run`, a `dict` with `repo_id`, `revision`, `private` and `files` (`(path, bytes)` pairs);
        otherwise the `CommitInfo` of the upload.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Export folder not found: {folder}; run `rrg export` first.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"Invalid repo id {repo_id!r}: {err}") from err
    if "/" not in repo_id:
        raise ValueError(f"repo_id must be 'org/name' (or 'user/name'), got {repo_id!r}.")
    files = list_upload_files(folder)
    if not {"README.md"} <= {name for name, _ in files} or not any(n.endswith(".safetensors") for n, _ in files):
        raise ValueError(f"{folder} does not look like an `rrg export` folder (README.md and safetensors weights).")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    if repo_id not in readme:
        logger.warning("The model card in %s does not mention %s; re-export with --repo-id %s so its code loads it.",
                       folder, repo_id, repo_id)
    plan = {"repo_id": repo_id, "revision": revision or "main", "private": private, "files": files}
    if dry_run:
        return plan

    from huggingface_hub import HfApi

    token = check_hub_access(token)
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    logger.info("Repository ready: %s", url)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    message = commit_message or f"Upload {folder.name} with rrg export"
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=message,
        ignore_patterns=[".*", "**/.*", "__pycache__/*", "**/__pycache__/*"],
    )
    logger.info("Uploaded %d files to %s@%s.", len(files), repo_id, revision or "main")
    return info


def push_main(argv=None) -> int:
    """`rrg push`: upload an exported folder to the Hub (or list what would be uploaded). Returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="rrg push",
        description="Upload an `rrg export` folder to the Hugging Face Hub (token from HF_TOKEN or `hf auth login`).",
    )
    parser.add_argument("folder", help="The folder `rrg export` wrote.")
    parser.add_argument("--repo-id", required=True, help="Target model repository, org/name.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--revision", help="Branch to commit to (created if missing); default main.")
    parser.add_argument("--commit-message", help="Commit message.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be uploaded; contact nothing.")
    args = parser.parse_args(argv)
    result = push_to_hub(
        args.folder, args.repo_id, private=args.private, revision=args.revision,
        commit_message=args.commit_message, dry_run=args.dry_run,
    )
    if args.dry_run:
        total = sum(size for _, size in result["files"])
        lines = [f"Would upload to {result['repo_id']}@{result['revision']} "
                 f"({'private' if result['private'] else 'public'} if created):"]
        lines += [f"  {size:>14,d}  {name}" for name, size in result["files"]]
        lines.append(f"  {total:>14,d}  total ({len(result['files'])} files)")
        sys.stdout.write("\n".join(lines) + "\n")
    else:
        sys.stdout.write(f"{getattr(result, 'commit_url', result)}\n")
    return 0

"""Small helpers shared by tests (images, subprocess runner)."""

import os
import subprocess
import sys
import textwrap

import numpy as np


def xray(seed: int = 0, size: int = 40, dtype=np.uint8) -> np.ndarray:
    """A random grayscale 'radiograph' array."""
    rng = np.random.default_rng(seed)
    if dtype == np.uint16:
        return rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    return rng.integers(0, 256, size=(size, size), dtype=np.uint8)


# Run in a subprocess where neither `modeling_rrg` nor `training` can be imported: the saved folder must carry all
# the code it needs (that is what the Hub serves).
BLOCK_PROJECT = textwrap.dedent(
    """
    import sys
    for name in ("modeling_rrg", "training"):
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        import modeling_rrg  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("project still importable")
    """
)


def run_isolated(code: str, cwd, env_extra=None, timeout=600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_PROJECT + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
    return proc.stdout

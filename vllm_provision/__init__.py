"""vllm-provision: build vLLM from source on a GPU host and prove the result works."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
__version__ = "0.1.0"

"""Build once, install many: the vLLM wheel made from a built workspace, its manifest and key, the caches
that hold it (a directory, a static PEP 503 tree, a PyPI-compatible server), and its verified install.

Nothing here trusts a cache entry: every install checks the file's sha256 and the manifest's key, then the
manifest against the target env and host (torch, CUDA, C++ ABI, Python, GPU archs, glibc) first.
"""

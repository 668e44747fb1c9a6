"""The KV-cache check: what vLLM's ``# GPU blocks`` / ``# CPU blocks`` numbers mean, and a judge.

``GPU blocks`` are KV-cache blocks, not compute units. One block holds the keys and values of
``block_size`` tokens for every layer::

    bytes a token = layers x 2 (K and V) x kv_heads x head_dim x dtype bytes
    bytes a block = bytes a token x block_size

vLLM 0.2.2 (``Worker.profile_num_available_blocks``) runs one profiling forward pass with
``max_num_batched_tokens`` tokens, reads the torch allocator's peak (weights + activations of
*this* process; other processes are not subtracted in 0.2.x) and sizes the cache as::

    num_gpu_blocks = int((total_gpu_bytes x gpu_memory_utilization - peak) // bytes a block)
    num_cpu_blocks = int(swap_space_bytes // bytes a block)

so CPU blocks are the swap space for preempted sequences, nothing more. Later releases
(0.4+) count memory held by other processes against the budget too (``total - free``).

Split by job: model.py (the arithmetic), parse.py (vLLM's log lines and the smoke JSON), explain.py
(the words and figures users read), judge.py (the named checks). Toolkit side: stdlib only (it reads
the JSON that ``smoke/generate.py`` writes).
"""

"""The model layer: loading, hooks, generation and long-context prefill.

Everything that touches a model's forward pass directly lives here: the hook names and the one
hook context (:mod:`focuslens.model.hooks`), fused attention (:mod:`focuslens.model.fused`),
loading and the backend self-test (:mod:`focuslens.model.loading`), one KV-cache interface
over both backends (:mod:`focuslens.model.kvcache`), greedy generation
(:mod:`focuslens.model.generation`, batched: :mod:`focuslens.model.batched`), chunked
prefill through the KV cache (:mod:`focuslens.model.prefill`) and memory estimates
(:mod:`focuslens.model.memory`).
"""

from focuslens.model.batched import generate_greedy_batch
from focuslens.model.fused import FusedAttention, fused_attention
from focuslens.model.generation import (
    Generation,
    StopReason,
    answer_tokens,
    find_stop,
    generate_greedy,
)
from focuslens.model.loading import DTYPES, BackendError, BackendReport, check_backend, load_model
from focuslens.model.memory import (
    DEFAULT_CHUNK_SIZE,
    attention_cache_bytes,
    chunk_size_for,
    estimate_memory,
    kv_cache_bytes,
    parse_memory,
)
from focuslens.model.prefill import chunked_forward

__all__ = [
    "DTYPES",
    "BackendError",
    "BackendReport",
    "check_backend",
    "load_model",
    "fused_attention",
    "FusedAttention",
    "answer_tokens",
    "find_stop",
    "generate_greedy",
    "generate_greedy_batch",
    "Generation",
    "StopReason",
    "chunked_forward",
    "DEFAULT_CHUNK_SIZE",
    "attention_cache_bytes",
    "chunk_size_for",
    "estimate_memory",
    "kv_cache_bytes",
    "parse_memory",
]

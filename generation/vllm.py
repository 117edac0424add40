"""vLLM generation on GPUs: tensor parallel within a replica, data parallel across replicas.

vllm is imported only when a model is loaded, so this module imports on a CPU machine.
"""
from __future__ import annotations

import os
from dataclasses import asdict

from common.progress import progress_enabled
from generation.engines import FINISH_REASONS, Completion, EngineError, Messages, SamplingConfig, check_prompts


class VLLMEngine:
    """Offline vLLM generation. ``tensor_parallel_size`` shards one model over GPUs;
    ``data_parallel_size`` > 1 runs that many independent replicas in worker processes, each on its
    own ``tensor_parallel_size`` GPUs, and splits every ``generate`` call between them."""

    def __init__(self, model: str, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 tokenizer: str | None = None, enable_prefix_caching: bool = True):
        if tensor_parallel_size < 1 or data_parallel_size < 1:
            raise EngineError("vllm: tensor_parallel_size and data_parallel_size must be >= 1")
        self.llm_kwargs = {"model": str(model), "tensor_parallel_size": tensor_parallel_size,
                           "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
                           "trust_remote_code": trust_remote_code,
                           "enable_prefix_caching": enable_prefix_caching}
        if max_model_len:
            self.llm_kwargs["max_model_len"] = max_model_len
        if tokenizer:
            self.llm_kwargs["tokenizer"] = tokenizer
        self.data_parallel_size = data_parallel_size
        self._llm = None
        self._pool = None

    def _local_llm(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise EngineError("vllm is not installed: pip install 'mixdistill[gpu]'") from exc
            self._llm = LLM(**self.llm_kwargs)
        return self._llm

    def _replica_pool(self):
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # CUDA cannot be re-initialised in a forked child: replicas need fresh processes.
            ctx = mp.get_context("spawn")
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            gpus = visible.split(",") if visible else [str(i) for i in range(_gpu_count())]
            tp = self.llm_kwargs["tensor_parallel_size"]
            if len(gpus) < tp * self.data_parallel_size:
                raise EngineError(f"vllm: {self.data_parallel_size} replicas x {tp} GPUs need "
                                  f"{tp * self.data_parallel_size} GPUs, found {len(gpus)}")
            slots = ctx.Queue()
            for r in range(self.data_parallel_size):
                slots.put(",".join(gpus[r * tp:(r + 1) * tp]))
            self._pool = ProcessPoolExecutor(self.data_parallel_size, mp_context=ctx,
                                             initializer=_replica_init, initargs=(slots, self.llm_kwargs))
        return self._pool

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        check_prompts(prompts)
        if not prompts:
            return []
        params = asdict(sampling)
        if self.data_parallel_size == 1:
            # vLLM's own bar (requests, tokens/s) under the same rule as ours; replicas stay quiet,
            # their bars would interleave
            return _vllm_generate(self._local_llm(), prompts, params, show_progress=progress_enabled())
        shards = [prompts[i::self.data_parallel_size] for i in range(self.data_parallel_size)]
        futures = [self._replica_pool().submit(_replica_generate, shard, params) for shard in shards]
        parts = [f.result() for f in futures]
        # Undo the round-robin split: prompt i went to shard i % dp at position i // dp.
        return [parts[i % self.data_parallel_size][i // self.data_parallel_size] for i in range(len(prompts))]

    def close(self):
        """Shut the replica processes down and drop the in-process model (its GPU memory goes
        back once collected)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._llm = None


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


_REPLICA_LLM = None


def _replica_init(slots, llm_kwargs):
    global _REPLICA_LLM
    os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()   # before vllm touches CUDA
    from vllm import LLM

    _REPLICA_LLM = LLM(**llm_kwargs)


def _replica_generate(prompts, params):
    return _vllm_generate(_REPLICA_LLM, prompts, params)


def _vllm_generate(llm, prompts: list[Messages], params: dict, show_progress: bool = False) -> list[list[Completion]]:
    from vllm import SamplingParams

    sp = SamplingParams(n=params["n"], temperature=params["temperature"], top_p=params["top_p"],
                        max_tokens=params["max_tokens"], seed=params["seed"])
    outputs = llm.chat(prompts, sp, use_tqdm=show_progress)
    result = []
    for i, out in enumerate(outputs):
        prompt_tokens = len(out.prompt_token_ids or [])
        samples = []
        for c in out.outputs:
            if c.finish_reason not in FINISH_REASONS:
                raise EngineError(f"vllm: prompt {i}: unexpected finish_reason {c.finish_reason!r}")
            samples.append(Completion(c.text, c.finish_reason, prompt_tokens, len(c.token_ids)))
        result.append(samples)
    return result

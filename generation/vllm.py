"""vLLM generation on GPUs: tensor parallel within a replica, data parallel across replicas.

vllm (and ray, for replicas) is imported only when a model is loaded, so this module imports on a
CPU machine.
"""
from __future__ import annotations

from common.progress import progress_enabled
from generation.engines import FINISH_REASONS, Completion, EngineError, Messages, SamplingConfig, check_prompts


class VLLMEngine:
    """Offline vLLM generation. ``tensor_parallel_size`` shards one model over GPUs;
    ``data_parallel_size`` > 1 runs that many independent replicas as Ray actors
    (:class:`~generation.ray_engine.RayEngine`), each on its own ``tensor_parallel_size`` GPUs, and
    splits every ``generate`` call between them."""

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
        self._replicas = None

    def _local_llm(self):
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise EngineError("vllm is not installed: pip install 'mixdistill[gpu]'") from exc
            self._llm = LLM(**self.llm_kwargs)
        return self._llm

    def _ray_replicas(self):
        if self._replicas is None:
            from generation.ray_engine import RayEngine, RayOptions

            # Each replica is a one-replica VLLMEngine; vLLM runs tensor parallelism inside its actor.
            self._replicas = RayEngine(_one_replica, self.llm_kwargs,
                                       RayOptions(replicas=self.data_parallel_size,
                                                  num_gpus=self.llm_kwargs["tensor_parallel_size"]))
        return self._replicas

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        check_prompts(prompts)
        if not prompts:
            return []
        if self.data_parallel_size > 1:
            return self._ray_replicas().generate(prompts, sampling)
        # vLLM's own bar (requests, tokens/s) under the same rule as ours; Ray replicas stay quiet,
        # their bars would interleave
        return _vllm_generate(self._local_llm(), prompts, sampling, show_progress=progress_enabled())

    def close(self):
        """Stop the replica actors and drop the in-process model (its GPU memory goes back once
        collected)."""
        if self._replicas is not None:
            self._replicas.close()
            self._replicas = None
        self._llm = None


def _one_replica(llm_kwargs: dict) -> VLLMEngine:
    return VLLMEngine(**llm_kwargs)


def _vllm_generate(llm, prompts: list[Messages], sampling: SamplingConfig,
                   show_progress: bool) -> list[list[Completion]]:
    from vllm import SamplingParams

    sp = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                        max_tokens=sampling.max_tokens, seed=sampling.seed)
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

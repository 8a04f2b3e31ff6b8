"""Rollout: sample responses from the current policy.

Two engines with the same three methods (generate, sync_weights, sleep/wake_up):

  VLLMEngine  vLLM living inside the training process ("colocated"). After each update the trainer
              pushes its weights into the engine in place (sync_weights); on a GPU the engine can sleep
              during the update to hand its KV-cache memory to the trainer.
  HFEngine    transformers' generate on the policy model itself. The fallback when vLLM is absent:
              slow, but the same outputs, so every other part of the loop runs unchanged.

generate() returns one Sample per response, grouped by prompt: the samples_per_prompt responses to
prompt i are samples[i * samples_per_prompt : (i + 1) * samples_per_prompt]. With a seed, the samples
depend only on (weights, prompts, seed), not on what was generated before: train.py passes a seed per
step, which is what lets a resumed run sample exactly what the uninterrupted run would have.
"""

import os
from dataclasses import dataclass

import torch

# The engine must run in this process for in-place weight sync; vLLM's V1 engine otherwise
# starts a separate engine-core process. Must be set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@dataclass
class Sample:
    prompt_index: int               # which prompt of the batch this responds to
    prompt_token_ids: list          # [prompt_len]
    response_token_ids: list        # [response_len], including the end-of-text token when it stopped on one
    response_logprobs: list         # [response_len] the engine's log-prob of each sampled token
    response_text: str
    finish_reason: str              # "stop" (end-of-text or a stop string) or "length" (hit max_new_tokens)


def vllm_available():
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


#### vLLM, colocated

class VLLMEngine:
    def __init__(self, model_path, dtype, seed, max_model_len, memory_utilization, enable_sleep,
                 tensor_parallel_size=1):
        from vllm import LLM

        # Under torchrun each rank holds its own engine on its own GPU; the external launcher makes vLLM
        # take its device and rank from torchrun's environment (as TRL's colocate mode does). With
        # tensor_parallel_size K, K consecutive ranks hold one engine between them, each a 1/K slice of
        # every layer: vLLM then counts the groups as its data-parallel ranks, and the ranks of a group
        # must make the same generate calls (train.py gives them the same prompts and seed).
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        groups = dict(tensor_parallel_size=tensor_parallel_size, data_parallel_size=world_size // tensor_parallel_size) \
            if tensor_parallel_size > 1 else {}
        # On CPU vLLM sizes the KV cache as memory_utilization x RAM minus this process's resident memory,
        # which goes negative once the trainer (its model, its optimizer) already holds more than that
        # share: there the KV cache is given explicitly as memory_utilization x RAM instead.
        memory = dict(gpu_memory_utilization=memory_utilization) if torch.cuda.is_available() else \
            dict(kv_cache_memory_bytes=int(memory_utilization * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
        self.llm = LLM(
            distributed_executor_backend="external_launcher" if world_size > 1 else None,
            **groups,
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            **memory,
            enable_sleep_mode=enable_sleep,
            enforce_eager=not torch.cuda.is_available(),  # no graph capture on CPU
            # Log-probs after temperature scaling: those of the distribution the tokens were actually
            # sampled from, which is what the trainer recomputes (it divides its logits by the temperature).
            logprobs_mode="processed_logprobs",
        )
        self.dtype = getattr(torch, dtype)  # what the policy's weights are cast to when synced
        self.asleep = False

    def generate(self, prompts, samples_per_prompt, temperature, top_p, max_new_tokens, stop, seed=None):
        from vllm import SamplingParams

        # vLLM matches stop strings in the text decoded without special tokens, so a stop string that is
        # a special token (Qwen's <|im_end|>) would never match: stop on its token id instead.
        vocabulary = self.llm.get_tokenizer().get_vocab()
        params = SamplingParams(
            n=samples_per_prompt, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
            stop=stop or None, stop_token_ids=[vocabulary[s] for s in stop or () if s in vocabulary] or None,
            logprobs=0,  # logprobs=0: only the sampled token's log-prob
        )
        if seed is not None:
            # The engine runs in this process, so its sampler draws from torch's global generator. (vLLM's
            # per-request seeds would also do, but its sampler then loops over the requests one by one.)
            torch.manual_seed(seed)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        samples = []
        for prompt_index, output in enumerate(outputs):
            for completion in output.outputs:
                token_ids = list(completion.token_ids)
                logprobs = [step[token].logprob for step, token in zip(completion.logprobs, token_ids)]
                samples.append(Sample(
                    prompt_index=prompt_index, prompt_token_ids=list(output.prompt_token_ids),
                    response_token_ids=token_ids, response_logprobs=logprobs, response_text=completion.text,
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                ))
        return samples

    @torch.no_grad()
    def sync_weights(self, model):
        """Copy the policy's current weights into the engine, in place, and drop cached prefixes.

        reload_weights with an iterator loads our tensors through vLLM's own weight loaders (which
        handle fused QKV / gate-up layouts and the CPU backend's repacking). Without an iterator it
        would reload the checkpoint from disk and silently undo every update. The iterator streams: a
        sharded (FSDP2) policy is gathered one tensor at a time as vLLM asks for it (ppo.full_weights),
        cast to the engine's dtype first, so a sync never holds a second copy of the model.
        """
        from ppo import full_weights

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": full_weights(model, self.dtype)})
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()

    def sleep(self):
        """Free the KV cache (level 1 keeps the weights) while the trainer needs the GPU memory."""
        self.llm.sleep(level=1)
        self.asleep = True

    def wake_up(self):
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


#### transformers generate, the fallback

class HFEngine:
    """Generates with the policy model itself, so there are no weights to sync."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def generate(self, prompts, samples_per_prompt, temperature, top_p, max_new_tokens, stop, seed=None):
        from ppo import response_logprobs_and_entropy

        if seed is not None:
            torch.manual_seed(seed)  # generate samples from the global generator
        tokenizer, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        tokenizer.padding_side = "left"
        batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)  # BOS as vLLM adds it
        greedy = temperature == 0
        output = model.generate(
            **batch, do_sample=not greedy, temperature=None if greedy else temperature,
            top_p=None if greedy else top_p, top_k=None, max_new_tokens=max_new_tokens,
            num_return_sequences=samples_per_prompt, stop_strings=stop or None, tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )  # [len(prompts) * samples_per_prompt, padded_prompt_len + generated_len]
        generated = output[:, batch["input_ids"].shape[1]:].tolist()

        samples = []
        for row, token_ids in enumerate(generated):
            prompt_index = row // samples_per_prompt
            prompt_ids = [t for t, keep in zip(batch["input_ids"][prompt_index].tolist(),
                                               batch["attention_mask"][prompt_index].tolist()) if keep]
            response_ids, finish_reason = self._trim(token_ids, max_new_tokens, stop)
            samples.append(Sample(prompt_index=prompt_index, prompt_token_ids=prompt_ids,
                                  response_token_ids=response_ids, response_logprobs=[],
                                  response_text=tokenizer.decode(response_ids, skip_special_tokens=True),
                                  finish_reason=finish_reason))

        # The engine's log-probs, recomputed by a forward pass of the same model.
        sequences = [s.prompt_token_ids + s.response_token_ids for s in samples]
        prompt_lengths = [len(s.prompt_token_ids) for s in samples]
        logprobs, _ = response_logprobs_and_entropy(model, sequences, prompt_lengths,
                                                    temperature=temperature or 1.0, pad_token_id=tokenizer.pad_token_id)
        for sample, sample_logprobs in zip(samples, logprobs):
            sample.response_logprobs = sample_logprobs[:len(sample.response_token_ids)].tolist()
        model.train(was_training)
        return samples

    def _trim(self, token_ids, max_new_tokens, stop):
        """Cut the padding generate appends after a finished sequence; say why it finished. (When the pad
        token is the end-of-text token, as in Qwen's tokenizers, the first pad looks like an end-of-text:
        a stop string before it must win, or the response would end in a token never sampled.)"""
        eos = self.tokenizer.eos_token_id
        end = token_ids.index(eos) + 1 if eos in token_ids else len(token_ids)
        if stop and any(s in self.tokenizer.decode(token_ids[:end]) for s in stop):
            for length in range(1, end + 1):  # the shortest prefix that contains a stop string
                if any(s in self.tokenizer.decode(token_ids[:length]) for s in stop):
                    return token_ids[:length], "stop"
        if end < len(token_ids) or (end and token_ids[end - 1] == eos):
            return token_ids[:end], "stop"
        return token_ids, "length" if len(token_ids) >= max_new_tokens else "stop"

    def sync_weights(self, model):
        pass  # generates with the policy itself

    def sleep(self):
        pass

    def wake_up(self):
        pass

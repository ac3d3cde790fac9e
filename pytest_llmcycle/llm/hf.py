"""Hugging Face ``generate`` as a marked call: one mark per generation step.

A logits processor is called once per generation step, after the step's logits exist, in
greedy search, sampling and beam search alike; the one here only calls ``tick()`` (a clock
read, or a CUDA event record) and returns the scores untouched, so generation is unchanged.
It is appended after the model's own processors, so a step's mark includes its sampler.

Imported lazily (it imports transformers).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
from transformers import LogitsProcessor, LogitsProcessorList

#: generate() arguments that would break a per-call measurement
_REFUSED = {
    "past_key_values": "a fresh KV cache is built for every call; don't pass past_key_values",
    "cache": "a fresh KV cache is built for every call; don't pass a cache",
    "streamer": "a streamer adds host work to every step; time generation without it",
    "logits_processor": "pass extra processors as processors=[...], so the step marker stays last",
}


#: the signature Hugging Face reads off every processor at every step (see StepMarker)
_STEP_SIGNATURE = inspect.Signature(
    [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("input_ids", "scores")]
)


class StepMarker(LogitsProcessor):
    """Calls ``tick()`` once per generation step, leaving the scores as they are.

    ``LogitsProcessorList.__call__`` runs ``inspect.signature(processor.__call__)`` for every
    processor at every step; on a bound method that builds a new Signature each time (10-150 us
    a step, measured: most of what the marker cost a token). The instance's ``__call__``
    attribute is therefore a plain function carrying its signature ready-made, which
    ``inspect.signature`` returns as is (about 1 us); calling the marker runs the same code.
    """

    def __init__(self) -> None:
        self.tick: Callable[[], None] | None = None

        def mark(input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            tick = self.tick
            if tick is not None:
                tick()
            return scores

        mark.__signature__ = _STEP_SIGNATURE  # type: ignore[attr-defined]
        self.__call__ = mark  # what inspect.signature(self.__call__) sees; self(...) uses the class's

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        tick = self.tick
        if tick is not None:
            tick()
        return scores


def prepare_inputs(inputs: Any) -> dict:
    """``generate`` keyword inputs from a token tensor or a tokenizer's output (already on device)."""
    __tracebackhide__ = True  # a refused argument points at the user's line
    if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
        raise TypeError(
            "llmcycle.generate takes token ids, not text: tokenize outside the timed region, e.g. "
            "inputs = tokenizer(prompt, return_tensors='pt').to(llmcycle.device)"
        )
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.dim() == 2 else inputs.unsqueeze(0)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if isinstance(inputs, Mapping):
        out = dict(inputs)
        if "input_ids" not in out:
            raise TypeError("inputs mapping has no 'input_ids'")
        out.setdefault("attention_mask", torch.ones_like(out["input_ids"]))
        return out
    raise TypeError(f"inputs must be a tensor of token ids or a mapping with input_ids, got {type(inputs).__name__}")


def generation_kwargs(
    model: Any,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    num_beams: int = 1,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Pinned-length generation settings: exactly ``max_new_tokens`` tokens every call."""
    __tracebackhide__ = True  # a refused argument points at the user's line
    extra = dict(extra or {})
    for k, why in _REFUSED.items():
        if k in extra:
            raise ValueError(f"llmcycle.generate: {why}")
    if "min_new_tokens" in extra and extra["min_new_tokens"] != max_new_tokens:
        raise ValueError("llmcycle.generate pins the output length: min_new_tokens is set to max_new_tokens")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    kw = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=num_beams,
    )
    gc = getattr(model, "generation_config", None)
    if gc is not None and getattr(gc, "pad_token_id", None) is None:
        eos = getattr(gc, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        kw["pad_token_id"] = eos if eos is not None else 0
    if num_beams > 1:
        kw.setdefault("early_stopping", False)
    kw.update(extra)
    return kw


class GenerateCall:
    """One ``generate`` as a marked call (``call(tick)``), and what one call generates.

    ``batch`` is the prompts' count, ``return_sequences`` the sequences returned per prompt
    (``num_return_sequences``: the argument, else the model's generation config) and ``beams``
    beam search's hypotheses per prompt. ``returned_rows`` is how many sequences a call really
    returned (read off the first call's output, after it returned), so the counts are checked against
    what generate did, not only against what was asked.
    """

    def __init__(self, model: Any, inputs: Any, gen_kwargs: dict, processors: list | None = None) -> None:
        self.model = model
        self.model_inputs = prepare_inputs(inputs)
        self.gen_kwargs = gen_kwargs
        self.marker = StepMarker()
        self.processors = LogitsProcessorList(list(processors or []) + [self.marker])
        ids = self.model_inputs["input_ids"]
        self.prompt_length = int(ids.shape[-1])
        self.batch = int(ids.shape[0])
        gc = getattr(model, "generation_config", None)
        given = gen_kwargs.get("generation_config")

        def setting(name: str) -> int:
            for source in (gen_kwargs, given, gc):
                value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
                if value is not None:
                    return int(value)
            return 1

        self.return_sequences = setting("num_return_sequences")
        self.beams = setting("num_beams")
        self.returned_rows: int | None = None

    def __call__(self, tick: Callable[[], None]) -> Any:
        self.marker.tick = tick
        try:
            out = self.model.generate(**self.model_inputs, logits_processor=self.processors, **self.gen_kwargs)
        finally:
            self.marker.tick = None
        if self.returned_rows is None:  # once: the calls are pinned to the same work
            seqs = getattr(out, "sequences", out)  # a tensor, or a GenerateOutput (return_dict_in_generate=True)
            shape = getattr(seqs, "shape", None)
            if shape is not None and len(shape) == 2:
                self.returned_rows = int(shape[0])
        return out

    def counts(self) -> tuple[int, int, int]:
        """(batch, return sequences per prompt, beams); the return sequences as a call returned them."""
        r = self.return_sequences
        if self.returned_rows is not None and self.batch and self.returned_rows % self.batch == 0:
            r = self.returned_rows // self.batch
        return self.batch, r, self.beams


def generate_call(model: Any, inputs: Any, gen_kwargs: dict, processors: list | None = None) -> tuple[GenerateCall, int, int]:
    """A ``call(tick)`` running one ``generate`` (a :class:`GenerateCall`); also the prompt length and batch size."""
    call = GenerateCall(model, inputs, gen_kwargs, processors)
    return call, call.prompt_length, call.batch


def check_devices(model: Any, inputs: Any, device: str) -> None:
    """Model and inputs on the device the test times on, or a message that says how."""
    __tracebackhide__ = True  # a refused argument points at the user's line
    try:
        p = next(iter(model.parameters()))
    except (StopIteration, AttributeError, TypeError):
        return
    ids = prepare_inputs(inputs)["input_ids"]
    want = torch.device(device)
    for what, dev in (("model", p.device), ("inputs", ids.device)):
        if dev.type != want.type:
            raise ValueError(f"llmcycle.generate: the {what} is on {dev} but the test times on {want}: move it with .to(llmcycle.device)")

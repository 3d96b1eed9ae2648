"""``megadepth generate RUN_DIR``: text from a run's checkpoint, to see what a model learned.

The checkpoint (any layout) is consolidated and run as one plain fp32 GPT with a KV cache (each step
feeds one token; ``kv_cache=False`` recomputes the whole context every step, the reference the cache is
tested against). The prompt follows an EOS, as every document in training does; sampling is seeded, so
the same command prints the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from megadepth.common.errors import ConfigError
from megadepth.config.schema import Config


@dataclass(frozen=True)
class SamplingOptions:
    """How the next token is picked: temperature 0 is greedy; top_k 0 keeps the whole vocabulary."""

    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int = 50
    seed: int = 0
    stop_at_eos: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 keeps every token), got {self.top_k}")


def resolve_device(device: str) -> torch.device:
    """``auto`` (a GPU if one is visible), ``cpu``, ``cuda`` or ``cuda:N``; else a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type != "cuda":
        raise ConfigError(f"--device {device!r}: generate runs on auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r} but no GPU is visible (torch.cuda.is_available() is False): "
                          "use --device cpu or auto")
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise ConfigError(f"--device {device!r} but only {count} GPU(s) are visible (cuda:0..cuda:{count - 1})")
    return parsed


class Generator:
    """A run's model and tokenizer, ready to continue prompts."""

    def __init__(self, run_dir: str | Path, tag: str | None = None, device: str = "auto",
                 kv_cache: bool = True) -> None:
        from megadepth.data import find_tokenizer
        from megadepth.model import GPT
        from megadepth.parametrize import Parametrization
        from megadepth.train.checkpoint import check_tag
        from megadepth.train.merge import consolidated_state

        check_tag(tag)  # both before the checkpoint is read (consolidating it is the expensive part)
        self.device = resolve_device(device)
        config, state, self.tag = consolidated_state(Path(run_dir), tag)
        self.config: Config = config
        self.kv_cache = kv_cache and config.model.block == "transformer"  # the linear block is per token
        ptz = Parametrization.from_config(config.model, config.parametrization, optimizer=config.optimizer.name)
        self.model = GPT(config.model, ptz.multipliers())
        self.model.load_state_dict({k: v.float() for k, v in state.items()})
        self.model.to(self.device).eval()
        path = Path(config.data.tokenizer) if config.data.tokenizer else find_tokenizer(config.data.path)
        if path is None or not path.is_file():
            raise ConfigError(f"no tokenizer for {run_dir}: its data.path ({config.data.path}) has no "
                              "tokenizer.model and data.tokenizer is not set")
        import sentencepiece as spm

        self.tokenizer = spm.SentencePieceProcessor(model_file=str(path))
        self.eos_id = int(self.tokenizer.eos_id())
        # model.vocab_size may exceed the tokenizer's pieces (padding to a multiple, room for more):
        # those rows were never trained on and have no text, so they are never sampled
        self.pieces = min(int(self.tokenizer.get_piece_size()), config.model.vocab_size)

    def encode(self, prompt: str) -> list[int]:
        """The context a prompt gives: an EOS (where documents begin in training), then its pieces."""
        return [self.eos_id, *self.tokenizer.encode(prompt)] if self.eos_id >= 0 else self.tokenizer.encode(prompt)

    @torch.no_grad()
    def continue_ids(self, context: list[int], options: SamplingOptions) -> list[int]:
        """New token ids after ``context`` (the context itself is not returned)."""
        if not context:
            raise ConfigError("an empty context: give a prompt, or use a tokenizer with an EOS id")
        rng = torch.Generator(device="cpu").manual_seed(options.seed)
        ids = list(context)
        new: list[int] = []
        next_logits = self._next_logits_cached() if self.kv_cache else self._next_logits
        for _ in range(options.max_new_tokens):
            logits = next_logits(ids)[: self.pieces].double().cpu()
            if options.temperature == 0:
                nxt = int(logits.argmax())
            else:
                # shifted first: a tiny temperature then sends the others to -inf, not the best to +inf
                logits = (logits - logits.max()) / options.temperature
                if 0 < options.top_k < logits.numel():
                    cutoff = torch.topk(logits, options.top_k).values[-1]
                    logits = logits.masked_fill(logits < cutoff, float("-inf"))
                nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=rng))
            if options.stop_at_eos and nxt == self.eos_id:
                break
            ids.append(nxt)
            new.append(nxt)
        return new

    def _next_logits(self, ids: list[int]) -> torch.Tensor:
        """The next token's logits from the last ``positions`` ids, computed from scratch."""
        tokens = torch.tensor([ids[-self.config.model.positions:]], dtype=torch.long, device=self.device)
        return self.model(tokens)[0, -1]

    def _next_logits_cached(self) -> Callable[[list[int]], torch.Tensor]:
        """A ``_next_logits`` that keeps a KV cache: the first call feeds the context, later ones the ids added
        since. Past the model's positions it recomputes the last ``positions`` ids every step, as the uncached
        path does (the positions a window starts from change with every token)."""
        cache = self.model.new_cache()

        def next_logits(ids: list[int]) -> torch.Tensor:
            if len(ids) > self.config.model.positions:
                return self._next_logits(ids)
            fresh = torch.tensor([ids[cache.length:]], dtype=torch.long, device=self.device)
            return self.model(fresh, cache=cache)[0, -1]

        return next_logits

    def context_note(self) -> str:
        """One line on what the model is conditioned on, as ``megadepth generate`` prints it (stderr)."""
        if self.eos_id < 0:
            return "megadepth generate: the tokenizer has no EOS: the context is the prompt's pieces alone"
        return (f"megadepth generate: the context is EOS (id {self.eos_id}, {self.tokenizer.id_to_piece(self.eos_id)!r}) "
                "and then the prompt: training documents follow an EOS (Hugging Face users of an export put it "
                "first too)")

    def complete(self, prompt: str, options: SamplingOptions) -> str:
        """The prompt and its continuation, decoded together (the boundary between them keeps its space)."""
        context = self.encode(prompt)
        new = self.continue_ids(context, options)
        return self.tokenizer.decode([t for t in context if t != self.eos_id] + new)

